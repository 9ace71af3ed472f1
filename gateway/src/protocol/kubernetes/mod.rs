//! Kubernetes API: what a request to an API server asks for, in the API server's own terms
//! ([`request_info`]), and the header rules the proxy applies so that what passes stays something
//! the gateway can inspect and mask.

pub mod request_info;

pub use request_info::{RequestInfo, RequestInfoError, derive};

use crate::masking::SECRET_COPY_ANNOTATIONS;

/// Subresources that open a shell, a stream or a tunnel into a workload or node: `pods/exec`,
/// `pods/attach`, `pods/portforward` (SPDY or WebSocket upgrades) and `pods/proxy`,
/// `services/proxy`, `nodes/proxy` (arbitrary HTTP, upgrades included, to the target). The gateway
/// refuses them in this version.
///
/// `pods/ephemeralcontainers` executes too, but it is an ordinary write (`update` or `patch`), so it
/// is not listed here: see [`NAMED_ONLY_SUBRESOURCES`].
pub const EXEC_LIKE_SUBRESOURCES: &[&str] = &["exec", "attach", "portforward", "proxy"];

/// Subresources an Allow rule grants only by name, never through `subresources: ["*"]`:
/// - `pods/ephemeralcontainers` runs the container's own `command` as soon as it is written, in
///   the pod's network and (with `targetContainerName`) its processes, with its volumes and
///   mounted tokens: exec without an upgrade;
/// - `serviceaccounts/token` answers with a live token of another ServiceAccount, made with the
///   gateway's credential: usable against the API server directly, or as another identity;
/// - `certificatesigningrequests/approval` approves a CSR, whose certificate is then a client
///   credential of its own.
///
/// A Deny or RequireApproval rule's `*` still covers them.
pub const NAMED_ONLY_SUBRESOURCES: &[&str] = &["ephemeralcontainers", "token", "approval"];

/// Built-in resources that live in no namespace, by API group: a rule naming namespaces leaves
/// them be. Any other resource (a custom one, say) may be namespaced, so a request for it that
/// names no namespace may span them all.
const CLUSTER_SCOPED: &[(&str, &[&str])] = &[
    (
        "",
        &["nodes", "namespaces", "persistentvolumes", "componentstatuses"],
    ),
    (
        "rbac.authorization.k8s.io",
        &["clusterroles", "clusterrolebindings"],
    ),
    (
        "storage.k8s.io",
        &[
            "storageclasses",
            "csidrivers",
            "csinodes",
            "volumeattachments",
            "volumeattributesclasses",
        ],
    ),
    ("apiextensions.k8s.io", &["customresourcedefinitions"]),
    ("apiregistration.k8s.io", &["apiservices"]),
    ("scheduling.k8s.io", &["priorityclasses"]),
    (
        "networking.k8s.io",
        &["ingressclasses", "ipaddresses", "servicecidrs"],
    ),
    ("node.k8s.io", &["runtimeclasses"]),
    (
        "admissionregistration.k8s.io",
        &[
            "mutatingwebhookconfigurations",
            "validatingwebhookconfigurations",
            "validatingadmissionpolicies",
            "validatingadmissionpolicybindings",
            "mutatingadmissionpolicies",
            "mutatingadmissionpolicybindings",
        ],
    ),
    (
        "certificates.k8s.io",
        &["certificatesigningrequests", "clustertrustbundles"],
    ),
    ("authentication.k8s.io", &["tokenreviews", "selfsubjectreviews"]),
    (
        "authorization.k8s.io",
        &[
            "subjectaccessreviews",
            "selfsubjectaccessreviews",
            "selfsubjectrulesreviews",
        ],
    ),
    (
        "flowcontrol.apiserver.k8s.io",
        &["flowschemas", "prioritylevelconfigurations"],
    ),
    ("resource.k8s.io", &["deviceclasses"]),
];

/// Whether `group`/`resource` is a built-in resource that lives in no namespace.
pub fn is_cluster_scoped(group: &str, resource: &str) -> bool {
    CLUSTER_SCOPED
        .iter()
        .any(|(g, list)| *g == group && list.contains(&resource))
}

/// Whether a subresource needs a connection upgrade or tunnel: one of [`EXEC_LIKE_SUBRESOURCES`].
/// Case-sensitive, as the API server's routes are.
pub fn is_streaming_subresource(sub: &str) -> bool {
    EXEC_LIKE_SUBRESOURCES.contains(&sub)
}

/// The JSON media type, the only encoding of API objects the gateway can inspect and mask.
const JSON: &str = "application/json";

/// Rewrites an `Accept` header so the API server answers in JSON and never in protobuf, CBOR or
/// YAML, which the gateway cannot mask.
///
/// Keeps, verbatim and in order, the media ranges whose type is `application/json` (any case), with
/// their parameters: `application/json;as=Table;v=v1;g=meta.k8s.io`, `;stream=watch`, discovery's
/// `;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`. Drops everything else: every
/// `application/vnd.kubernetes.protobuf*` range, `application/cbor`, `application/yaml`, and the
/// wildcards `*/*` and `application/*`, with which the server may pick any encoding. Returns
/// `application/json` when nothing remains.
///
/// Ranges are split on every `,` the way the API server's parser splits them (quotes do not
/// protect a comma), so each range kept is read by the server as the same JSON range. The caller
/// must send exactly one `Accept` header: the API server reads only the first.
///
/// Without `tables`, `as=Table` ranges are dropped too: a Table's cells are values without
/// field names (a printer column of `.spec.nodeName`), which field rules cannot reach.
pub fn json_accept(accept: Option<&str>, tables: bool) -> String {
    let kept: Vec<&str> = accept
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|range| {
            let mut parts = range.split(';');
            let media_type = parts.next().unwrap_or_default().trim();
            let table = parts.any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("as") && v.trim().eq_ignore_ascii_case("Table")
                })
            });
            media_type.eq_ignore_ascii_case(JSON) && (tables || !table)
        })
        .collect();
    if kept.is_empty() {
        JSON.to_owned()
    } else {
        kept.join(", ")
    }
}

/// Whether the API server decodes a request body with this `Content-Type` as JSON:
/// `application/json` and the patch types `application/json-patch+json`,
/// `application/merge-patch+json`, `application/strategic-merge-patch+json` (generally
/// `application/<x>+json`). Parameters such as `charset` are ignored.
///
/// `application/apply-patch+yaml` (server-side apply) is YAML, and `application/apply-patch+cbor`,
/// `application/cbor`, `application/yaml` and protobuf are not JSON either: the proxy treats such
/// bodies as opaque.
///
/// An empty `Content-Type` counts as JSON, because the API server decodes a body without one with
/// its first serializer, JSON. The media type is lower-cased as Go's `mime.ParseMediaType` does,
/// which maps `İ` (U+0130) to `i` and the Kelvin sign to `k`, so no spelling the server takes for
/// JSON escapes this check.
pub fn is_json_content_type(ct: &str) -> bool {
    let media_type = go_media_type(ct);
    if media_type.is_empty() {
        return true;
    }
    media_type == JSON
        || media_type
            .strip_prefix("application/")
            .and_then(|subtype| subtype.strip_suffix("+json"))
            .is_some_and(|base| !base.is_empty())
}

/// Whether an update (PUT) of a missing object of this resource creates it: the built-in
/// resources whose API allows create-on-update (RBAC's, Services, Endpoints, Events,
/// LimitRanges, Leases and LeaseCandidates, RuntimeClasses, API priority and fairness). Custom
/// resources and the rest answer 404.
pub fn creates_on_update(api_group: &str, resource: &str) -> bool {
    matches!(
        (api_group, resource),
        ("rbac.authorization.k8s.io", _)
            | ("flowcontrol.apiserver.k8s.io", _)
            | ("", "services" | "endpoints" | "events" | "limitranges")
            | ("events.k8s.io", "events")
            | ("coordination.k8s.io", "leases" | "leasecandidates")
            | ("node.k8s.io", "runtimeclasses")
    )
}

/// Whether the API server reads a PATCH with this `Content-Type` as a server-side apply, which
/// creates the object when it does not exist.
pub fn is_apply_patch(ct: &str) -> bool {
    go_media_type(ct).starts_with("application/apply-patch+")
}

/// Why a write to a Secret is refused for how it is asked, if it is: a dry run, or a
/// server-side apply that is not forced, answers differently when a value sent equals the one
/// stored (no conflict, no change in `managedFields`), which confirms guesses of a value the
/// agent may not read, and writes nothing.
pub fn secret_write_refusal(content_type: Option<&str>, query: &[(String, String)]) -> Option<&'static str> {
    if query.iter().any(|(k, v)| k == "dryRun" && !v.is_empty()) {
        return Some(
            "a dry-run write of a Secret is refused: its answer tells whether a value sent equals the stored one",
        );
    }
    let forced = query.iter().any(|(k, v)| k == "force" && v == "true");
    if content_type.is_some_and(is_apply_patch) && !forced {
        return Some(
            "a server-side apply of a Secret must be forced (kubectl apply --server-side --force-conflicts): its conflicts tell whether a value sent equals the stored one",
        );
    }
    None
}

/// Whether the API server reads a body with this `Content-Type` as a JSON patch (RFC 6902).
pub fn is_json_patch(ct: &str) -> bool {
    let media_type = go_media_type(ct);
    media_type == "application/json-patch+json"
}

/// Why a JSON patch of a Secret is refused, if it is: it copies a value of `data` or
/// `stringData` (or the whole object) anywhere, or moves one to a field masking does not cover,
/// or `test`s one (an oracle that confirms guesses). A patch the gateway cannot read is refused
/// too.
pub fn secret_patch_refusal(body: &[u8]) -> Option<&'static str> {
    const UNREADABLE: &str =
        "a JSON patch of a Secret must be a JSON array of operations the gateway can read";
    let Ok(serde_json::Value::Array(ops)) = crate::identity::strict_json::parse(body) else {
        return Some(UNREADABLE);
    };
    for op in &ops {
        let field = |k: &str| op.get(k).and_then(|v| v.as_str());
        let Some(kind) = field("op") else {
            return Some(UNREADABLE);
        };
        match kind {
            "copy" | "move" => {
                let (Some(from), Some(to)) = (field("from"), field("path")) else {
                    return Some(UNREADABLE);
                };
                let stays_in_data = !to.is_empty() && from_secret_field(to);
                if holds_secret_values(from) && !stays_in_data {
                    return Some(
                        "a JSON patch of a Secret may not copy or move its data to another field, where masking would not cover it",
                    );
                }
                // A copy kept in `data` is a value the agent may overwrite with guesses and
                // copy again: a write that changes nothing keeps the resourceVersion, which
                // confirms a guess without losing the value. (A move keeps no original.)
                if kind == "copy" && holds_secret_values(from) {
                    return Some(
                        "a JSON patch of a Secret may not copy its data, even within data: guesses written over the copy would be confirmed by an unchanged resourceVersion",
                    );
                }
                // The API server parses these keys of a docker-config Secret as JSON, and its
                // error quotes where a copied value stops parsing: an oracle for its bytes.
                let docker_config = to
                    .rsplit('/')
                    .next()
                    .is_some_and(|key| matches!(key, ".dockerconfigjson" | ".dockercfg"));
                if holds_secret_values(from) && docker_config {
                    return Some(
                        "a JSON patch of a Secret may not copy or move a value into .dockerconfigjson or .dockercfg, whose parse error would describe it",
                    );
                }
            }
            "test" if field("path").is_none_or(holds_secret_values) => {
                return Some(
                    "a JSON patch of a Secret may not test its data: each test would confirm a guess",
                );
            }
            _ => {}
        }
    }
    None
}

/// Whether a JSON pointer names a Secret's values or something holding them: the whole object,
/// `data`, `stringData` or within them, the annotations in which apply tools repeat the data
/// ([`SECRET_COPY_ANNOTATIONS`], masked by their key, so a copy under another key would not
/// be), `metadata` or `metadata/annotations` whole, or a pointer the gateway might read otherwise
/// than the server (one without a leading `/`).
fn holds_secret_values(pointer: &str) -> bool {
    if pointer.is_empty() || !pointer.starts_with('/') || from_secret_field(pointer) {
        return true;
    }
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    match tokens.as_slice() {
        [m] | [m, _] if m != "metadata" => false,
        [_] => true,
        [_, a] => a == "annotations",
        [m, a, key, ..] => {
            m == "metadata" && a == "annotations" && SECRET_COPY_ANNOTATIONS.contains(&key.as_str())
        }
        [] => true,
    }
}

/// Whether a JSON pointer's first token is `data` or `stringData` (`~1` and `~0` unescaped), as
/// the API server's json-patch reads it: split at every `/`, whatever precedes the first
/// dropped (`x/data/password` is `/data/password` there).
fn from_secret_field(pointer: &str) -> bool {
    let first = pointer.split('/').nth(1).unwrap_or_default();
    let first = first.replace("~1", "/").replace("~0", "~");
    first == "data" || first == "stringData"
}

/// A Content-Type's media type as the API server reads it: before any parameter, trimmed,
/// lower-cased by [`go_lower`].
fn go_media_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .chars()
        .map(go_lower)
        .collect()
}

/// Go's `unicode.ToLower` restricted to what matters for ASCII media types: the characters it maps
/// into ASCII are `A`-`Z`, `İ` (U+0130) and the Kelvin sign (U+212A).
fn go_lower(c: char) -> char {
    match c {
        '\u{130}' => 'i',
        '\u{212a}' => 'k',
        _ => c.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn secret_writes_that_confirm_guesses_are_refused() {
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let apply = Some("application/apply-patch+yaml");
        assert!(secret_write_refusal(apply, &q(&[("fieldManager", "kubectl")])).is_some());
        assert!(secret_write_refusal(apply, &q(&[("force", "true")])).is_none());
        assert!(secret_write_refusal(apply, &q(&[("force", "true"), ("dryRun", "All")])).is_some());
        assert!(
            secret_write_refusal(Some("application/merge-patch+json"), &q(&[("dryRun", "All")])).is_some()
        );
        assert!(secret_write_refusal(Some("application/merge-patch+json"), &q(&[])).is_none());
        assert!(secret_write_refusal(None, &q(&[("dryRun", "")])).is_none());
    }

    use super::*;

    #[test]
    fn secret_patches_may_not_copy_or_test_values() {
        let refused = |ops: serde_json::Value| secret_patch_refusal(ops.to_string().as_bytes()).is_some();
        let op = |op: &str, from: Option<&str>, path: &str| {
            let mut o = serde_json::json!({"op": op, "path": path, "value": "x"});
            if let Some(f) = from {
                o["from"] = f.into();
            }
            serde_json::json!([o])
        };
        for (kind, from, path) in [
            ("copy", Some("/data/p"), "/metadata/annotations/x"),
            ("move", Some("/stringData"), "/metadata/labels"),
            ("copy", Some(""), "/metadata/annotations/a"),
            ("copy", Some("/data/p"), ""),
            ("test", None, "/data/p"),
            ("test", None, ""),
            // The server drops whatever precedes a pointer's first `/`.
            ("copy", Some("x/data/p"), "/metadata/annotations/a"),
            ("test", None, " /data/p"),
            ("copy", Some("data"), "/metadata/annotations/a"),
            ("copy", Some("/data/p"), "x/metadata/annotations/a"),
            // The annotations that repeat the data, masked by their key only.
            (
                "copy",
                Some("/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration"),
                "/metadata/annotations/x",
            ),
            (
                "move",
                Some("/metadata/annotations/kapp.k14s.io~1original"),
                "/metadata/labels/x",
            ),
            ("copy", Some("/metadata/annotations"), "/metadata/labels"),
            ("copy", Some("/metadata"), "/metadata/annotations/x"),
            (
                "test",
                None,
                "/metadata/annotations/objectset.rio.cattle.io~1applied",
            ),
        ] {
            assert!(refused(op(kind, from, path)), "{kind} {from:?} {path}");
        }
        assert!(!refused(op("copy", Some("/d~0ta"), "/x")));
        // The gateway reads a patch as the server does, or refuses it.
        assert!(secret_patch_refusal(b"[{\"op\":\"copy\",\"op\":\"add\"}]").is_some());
        assert!(secret_patch_refusal(b"{}").is_some());
        assert!(refused(serde_json::json!([{"from": "/data/p"}])));
        // Into a docker config key, whose parse error would describe the value.
        for to in ["/data/.dockerconfigjson", "/stringData/.dockercfg"] {
            assert!(
                refused(serde_json::json!([{"op": "copy", "from": "/data/password", "path": to}])),
                "{to}"
            );
        }
        // A copy within data is a value to write guesses over.
        assert!(refused(
            serde_json::json!([{"op": "copy", "from": "/data/p", "path": "/data/q"}])
        ));
        // A move within data, and everything that reads no value, goes on.
        for ok in [
            serde_json::json!([{"op": "move", "from": "/data/p", "path": "/data/q"}]),
            serde_json::json!([{"op": "move", "from": "/data/p", "path": "/stringData/q"}]),
            serde_json::json!([{"op": "replace", "path": "/data/p", "value": "eA=="}]),
            serde_json::json!([{"op": "test", "path": "/metadata/name", "value": "db"}]),
            serde_json::json!([{"op": "copy", "from": "/metadata/annotations/team", "path": "/metadata/labels/team"}]),
            serde_json::json!([{"op": "copy", "from": "/metadata/labels", "path": "/metadata/annotations/l"}]),
            serde_json::json!([]),
        ] {
            assert_eq!(secret_patch_refusal(ok.to_string().as_bytes()), None, "{ok}");
        }
        assert!(is_json_patch("Application/JSON-Patch+JSON; charset=utf-8"));
        assert!(!is_json_patch("application/merge-patch+json"));
    }

    #[test]
    fn streaming_subresources() {
        for sub in ["exec", "attach", "portforward", "proxy"] {
            assert!(is_streaming_subresource(sub), "{sub}");
        }
        for sub in [
            "log",
            "status",
            "scale",
            "ephemeralcontainers",
            "eviction",
            "Exec",
            "",
            "exec ",
        ] {
            assert!(!is_streaming_subresource(sub), "{sub}");
        }
    }

    #[test]
    fn accept_never_lets_protobuf_through() {
        let cases: &[(Option<&str>, &str)] = &[
            (None, "application/json"),
            (Some(""), "application/json"),
            (Some("  "), "application/json"),
            (Some("application/json"), "application/json"),
            // client-go's default for built-in types.
            (
                Some("application/vnd.kubernetes.protobuf, */*"),
                "application/json",
            ),
            (
                Some("application/vnd.kubernetes.protobuf,application/json"),
                "application/json",
            ),
            (
                Some("application/vnd.kubernetes.protobuf;stream=watch"),
                "application/json",
            ),
            (Some("APPLICATION/VND.KUBERNETES.PROTOBUF"), "application/json"),
            // kubectl get: tables, in protobuf first.
            (
                Some(
                    "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,\
                     application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
                ),
                "application/json;as=Table;v=v1;g=meta.k8s.io, application/json",
            ),
            (
                Some("application/json;as=Table;v=v1;g=meta.k8s.io"),
                "application/json;as=Table;v=v1;g=meta.k8s.io",
            ),
            // Aggregated discovery.
            (
                Some(
                    "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,\
                     application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
                ),
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList, application/json",
            ),
            (
                Some("application/json;stream=watch"),
                "application/json;stream=watch",
            ),
            (
                Some("Application/JSON ; q=0.9 , text/plain;q=0.1"),
                "Application/JSON ; q=0.9",
            ),
            (Some("*/*"), "application/json"),
            (Some("application/*"), "application/json"),
            (Some("application/json, */*"), "application/json"),
            (Some("application/yaml"), "application/json"),
            (Some("application/cbor, application/cbor-seq"), "application/json"),
            (
                Some("application/com.github.proto-openapi.spec.v2@v1.0+protobuf"),
                "application/json",
            ),
            (
                Some("application/json+protobuf, application/jsonx"),
                "application/json",
            ),
            (Some("text/html, application/xhtml+xml"), "application/json"),
            // A quoted comma does not hide a protobuf range: the server splits on it too.
            (
                Some("application/json;x=\"a,application/vnd.kubernetes.protobuf\""),
                "application/json;x=\"a",
            ),
            (Some(",,application/json,,"), "application/json"),
        ];
        for (accept, want) in cases {
            let got = json_accept(*accept, true);
            assert_eq!(got, *want, "{accept:?}");
            assert!(!got.to_ascii_lowercase().contains("protobuf"), "{accept:?}");
        }
        // Where field rules apply, Tables go too (kubectl prints the plain list then).
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(json_accept(Some(kubectl), false), "application/json");
        assert_eq!(
            json_accept(Some("application/json; AS = table"), false),
            "application/json"
        );
        assert!(json_accept(Some(kubectl), true).contains("as=Table"));
    }

    #[test]
    fn json_content_types() {
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            " application/json ",
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/vnd.example+json",
            "",
            "  ",
            "appl\u{130}cation/json",
        ] {
            assert!(is_json_content_type(ct), "{ct:?}");
        }
        for ct in [
            "application/apply-patch+yaml",
            "application/apply-patch+cbor",
            "application/yaml",
            "application/cbor",
            "application/vnd.kubernetes.protobuf",
            "text/json",
            "application/+json",
            "application/jsonx",
            "application/json+yaml",
            "text/plain",
            "multipart/form-data; boundary=json",
        ] {
            assert!(!is_json_content_type(ct), "{ct:?}");
        }
    }
}
