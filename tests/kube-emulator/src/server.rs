//! The HTTP(S) server: accepts connections on 127.0.0.1, authenticates, routes the Kubernetes REST
//! paths to the store, and turns results into JSON responses and `Status` failures.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::auth::{self, User};
use crate::error::Error;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{DeleteOptions, ListOptions, Store, WriteOptions};
use crate::watch::{self, WatchParams};
use crate::{discovery, kubeconfig, openapi, table, tls};

type Body = BoxBody<Bytes, Infallible>;

/// How to run the emulator.
#[derive(Clone, Debug)]
pub struct Config {
    /// HTTPS with a generated CA (`true`) or plain HTTP.
    pub tls: bool,
    /// The users; each gets a token and a kubeconfig.
    pub users: Vec<User>,
    /// Whether requests without a token are served (as if by an administrator).
    pub allow_anonymous: bool,
    /// Whether RBAC is enforced from the stored Roles, ClusterRoles and bindings (users in
    /// `system:masters`, like `admin`, bypass it).
    pub authorization: bool,
    /// Events kept for watches to resume from; older resourceVersions get 410 Gone.
    pub history: usize,
    /// Interval between watch bookmarks.
    pub bookmark_interval: Duration,
    /// Namespace of the kubeconfig contexts.
    pub namespace: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tls: true,
            users: ["admin", "operator", "gateway", "approver"]
                .iter()
                .map(|n| User::new(n))
                .collect(),
            allow_anonymous: false,
            authorization: false,
            history: 10_000,
            bookmark_interval: Duration::from_secs(1),
            namespace: "default".into(),
        }
    }
}

struct Shared {
    store: Mutex<Store>,
    users: Vec<User>,
    allow_anonymous: bool,
    authorization: bool,
    bookmark_interval: Duration,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A panicking request must not take the cluster down for the rest of the test.
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running emulator. Dropping it stops the server and removes its files.
pub struct Emulator {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: bool,
    kubeconfigs: HashMap<String, PathBuf>,
    ca_pem: Option<String>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Starts the emulator on its own runtime (one worker thread), listening on 127.0.0.1 on a free
    /// port, and writes a kubeconfig per user.
    pub fn start(config: Config) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kube-emulator")
            .enable_all()
            .build()?;
        let tls = if config.tls { Some(tls::generate()?) } else { None };
        // Bound with std so that starting works from inside another runtime (async tests).
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(config.history)),
            users: config.users.clone(),
            allow_anonymous: config.allow_anonymous,
            authorization: config.authorization,
            bookmark_interval: config.bookmark_interval,
        });
        let dir = tempfile::tempdir()?;
        let ca_path = match &tls {
            Some(t) => {
                let path = dir.path().join("ca.crt");
                std::fs::write(&path, &t.ca_pem)?;
                Some(path)
            }
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = format!("{scheme}://{addr}");
        let mut kubeconfigs = HashMap::new();
        for user in &config.users {
            let path = kubeconfig::write(
                dir.path(),
                &server,
                ca_path.as_deref(),
                Some(user),
                &config.namespace,
            )?;
            kubeconfigs.insert(user.name.clone(), path);
        }
        if config.allow_anonymous {
            let path = kubeconfig::write(dir.path(), &server, ca_path.as_deref(), None, &config.namespace)?;
            kubeconfigs.insert("anonymous".into(), path);
        }
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
        runtime.spawn(accept_loop(listener, acceptor, shared.clone()));
        Ok(Self {
            runtime: Some(runtime),
            shared,
            addr,
            tls: config.tls,
            kubeconfigs,
            ca_pem: tls.map(|t| t.ca_pem),
            dir,
        })
    }

    /// `https://127.0.0.1:PORT` (or `http://`).
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// The kubeconfig of a configured user (or `anonymous`).
    pub fn kubeconfig(&self, user: &str) -> &Path {
        self.kubeconfigs
            .get(user)
            .unwrap_or_else(|| panic!("no user {user:?} configured"))
    }

    /// PEM of the CA, for HTTPS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// A directory that lives as long as the emulator (for kubectl's cache, say).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Direct access to the cluster state, for set-up and for inspecting it in tests.
    pub fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        f(&mut self.shared.store())
    }

    /// Creates CustomResourceDefinitions (as `kubectl create` would, with the same checks).
    pub fn install_crds(&self, crds: &[Value]) -> Result<(), Error> {
        let mut store = self.shared.store();
        let rt = store
            .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .expect("built in");
        let opts = WriteOptions {
            field_manager: "kube-emulator".into(),
            ..Default::default()
        };
        for crd in crds {
            store
                .create(&rt, "", crd.clone(), &opts)
                .map_err(|e| Error::Crd(e.message))?;
        }
        Ok(())
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Works inside async tests too, unlike dropping the runtime.
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let builder = hyper::server::conn::http1::Builder::new();
            // Connection errors (clients going away mid-watch) are normal; nothing to report.
            match acceptor {
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                    }
                }
                None => {
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

/// The annotation whose value the emulator serves as a pod's log (`pods/log`).
pub const LOG_ANNOTATION: &str = "kube-emulator.agentgate.dev/log";

fn json_response(code: u16, value: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .expect("static response parts are valid")
}

fn error_response(err: &ApiError) -> Response<Body> {
    json_response(err.code, &err.to_status())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(parts: &Parts) -> HashMap<String, String> {
    parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    // As the API server's audit filter: the client's Audit-ID is the event's, or a new one, and
    // is echoed on the response.
    let audit_id = req.headers().get("audit-id").cloned().unwrap_or_else(|| {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        hyper::header::HeaderValue::from_str(&format!("emulated-{n}")).expect("ASCII")
    });
    let mut response = respond(shared, req).await;
    response.headers_mut().insert("audit-id", audit_id);
    Ok(response)
}

async fn respond(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let user = match auth::authenticate(&shared.users, &parts.headers) {
        Ok(Some(user)) => Some(user.clone()),
        Ok(None) if shared.allow_anonymous => None,
        _ => return error_response(&ApiError::unauthorized()),
    };
    let user = match impersonate(&shared, user, &parts.headers) {
        Ok(user) => user,
        Err(e) => return error_response(&e),
    };
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return error_response(&ApiError::bad_request(format!("reading the body: {e}")));
        }
    };
    route(&shared, &parts, &body, user.as_ref()).unwrap_or_else(|e| error_response(&e))
}

/// The user a request acts as: the authenticated one, or the one it impersonates if that user
/// may (as on a cluster: the `impersonate` verb on `users` and `groups`; everyone when
/// authorization is off, `system:masters` always).
fn impersonate(
    shared: &Shared,
    user: Option<User>,
    headers: &hyper::HeaderMap,
) -> Result<Option<User>, ApiError> {
    let target = match auth::impersonation(headers) {
        Ok(None) => return Ok(user),
        Ok(Some(target)) => target,
        Err(why) => return Err(ApiError::bad_request(why)),
    };
    let Some(requester) = user else {
        return Err(ApiError::unauthorized());
    };
    if shared.authorization {
        let store = shared.store();
        let users = crate::resources::ResourceType::builtin("", "v1", "User", "users", false);
        let groups = crate::resources::ResourceType::builtin("", "v1", "Group", "groups", false);
        let wanted = std::iter::once((&users, target.name.as_str()))
            .chain(target.groups.iter().map(|g| (&groups, g.as_str())));
        for (rt, name) in wanted {
            let request = crate::rbac::Request {
                user: &requester,
                verb: "impersonate",
                rt,
                subresource: None,
                namespace: None,
                name: Some(name),
            };
            crate::rbac::authorize(&store, &request)?;
        }
    }
    Ok(Some(target))
}

fn route(
    shared: &Shared,
    parts: &Parts,
    body: &Bytes,
    user: Option<&User>,
) -> Result<Response<Body>, ApiError> {
    let path = parts.uri.path();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get = parts.method == Method::GET;
    match segs.as_slice() {
        ["version"] if get => Ok(json_response(200, &discovery::version())),
        ["healthz" | "readyz" | "livez"] if get => Ok(Response::builder()
            .header("Content-Type", "text/plain")
            .body(Full::new(Bytes::from_static(b"ok")).boxed())
            .expect("valid")),
        ["api"] if get => Ok(json_response(200, &discovery::core_versions())),
        ["apis"] if get => Ok(json_response(200, &discovery::group_list(shared.store().types()))),
        ["apis", group] if get => discovery::group(shared.store().types(), group)
            .map(|v| json_response(200, &v))
            .ok_or_else(ApiError::path_not_found),
        ["api", version] if get => discovery::resource_list(shared.store().types(), "", version)
            .map(|v| json_response(200, &v))
            .ok_or_else(ApiError::path_not_found),
        ["apis", group, version] if get => discovery::resource_list(shared.store().types(), group, version)
            .map(|v| json_response(200, &v))
            .ok_or_else(ApiError::path_not_found),
        ["openapi", "v2"] if get => Ok(Response::builder()
            .header(
                "Content-Type",
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
            )
            .body(Full::new(Bytes::from_static(openapi::V2_DOCUMENT)).boxed())
            .expect("valid")),
        ["openapi", "v3"] if get => {
            let store = shared.store();
            Ok(json_response(
                200,
                &openapi::index(store.types(), store.registry_generation()),
            ))
        }
        ["openapi", "v3", rest @ ..] if get => {
            openapi::group_version(shared.store().types(), &rest.join("/"))
                .map(|v| json_response(200, &v))
                .ok_or_else(ApiError::path_not_found)
        }
        ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"] if parts.method == Method::POST => {
            // `kubectl auth whoami`: which user a token is.
            let (name, mut groups) = match user {
                Some(u) => (u.name.as_str(), u.groups.clone()),
                None => ("system:anonymous", Vec::new()),
            };
            groups.push(
                if user.is_some() {
                    "system:authenticated"
                } else {
                    "system:unauthenticated"
                }
                .into(),
            );
            let review = serde_json::json!({
                "kind": "SelfSubjectReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": null},
                "status": {"userInfo": {"username": name, "groups": groups}},
            });
            Ok(json_response(201, &review))
        }
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] if parts.method == Method::POST => {
            // Whether a token is one of this cluster's users'. Like the API server, the answer
            // carries the request's spec, the token included, and the review's status.
            let Some(requester) = user else {
                return Err(ApiError::unauthorized());
            };
            if shared.authorization {
                let rt = crate::resources::ResourceType::builtin(
                    "authentication.k8s.io",
                    "v1",
                    "TokenReview",
                    "tokenreviews",
                    false,
                );
                let request = crate::rbac::Request {
                    user: requester,
                    verb: "create",
                    rt: &rt,
                    subresource: None,
                    namespace: None,
                    name: None,
                };
                crate::rbac::authorize(&shared.store(), &request)?;
            }
            let mut review: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the TokenReview does not decode: {e}")))?;
            let token = review["spec"]["token"].as_str().unwrap_or_default();
            review["status"] = match shared
                .users
                .iter()
                .find(|u| !token.is_empty() && u.token == token)
            {
                Some(u) => serde_json::json!({
                    "authenticated": true,
                    "user": {"username": u.name, "groups": u.groups},
                }),
                None => serde_json::json!({"authenticated": false, "error": "invalid bearer token"}),
            };
            review["metadata"] = serde_json::json!({"creationTimestamp": null});
            Ok(json_response(201, &review))
        }
        ["api", version, rest @ ..] => resource(shared, parts, body, user, "", version, rest),
        ["apis", group, version, rest @ ..] => resource(shared, parts, body, user, group, version, rest),
        _ => Err(ApiError::path_not_found()),
    }
}

fn default_manager(parts: &Parts) -> String {
    // The API server names an unnamed manager after the User-Agent's product.
    parts
        .headers
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .chars()
        .take(128)
        .collect()
}

/// Whether the client accepts JSON, the only encoding the emulator writes objects in: no `Accept`,
/// or a range for `application/json` or a wildcard. An API server would answer a protobuf-only or
/// YAML-only `Accept` in that encoding; the emulator refuses it (406) rather than answer JSON to a
/// client that did not ask for it.
fn accepts_json(parts: &Parts) -> bool {
    let mut ranges = parts
        .headers
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|r| {
            r.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|r| !r.is_empty())
        .peekable();
    ranges.peek().is_none()
        || ranges.any(|r| matches!(r.as_str(), "application/json" | "application/*" | "*/*"))
}

fn wants_table(parts: &Parts) -> bool {
    parts
        .headers
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

#[allow(clippy::too_many_arguments)]
fn resource(
    shared: &Shared,
    parts: &Parts,
    body: &Bytes,
    user: Option<&User>,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Response<Body>, ApiError> {
    let mut store = shared.store();
    let (namespace, plural, tail): (Option<&str>, &str, &[&str]) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if store.find(group, version, plural).is_some_and(|t| t.namespaced) =>
        {
            (Some(*ns), *plural, tail)
        }
        [plural, tail @ ..] => (None, *plural, tail),
        [] => return Err(ApiError::path_not_found()),
    };
    let rt = store
        .find(group, version, plural)
        .ok_or_else(ApiError::path_not_found)?;
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some(*name), None),
        [name, "status"] if rt.status_subresource => (Some(*name), Some("status")),
        [name, "log"] if group.is_empty() && plural == "pods" => (Some(*name), Some("log")),
        _ => return Err(ApiError::path_not_found()),
    };
    if rt.namespaced && name.is_some() && namespace.is_none() {
        return Err(ApiError::path_not_found());
    }
    if subresource == Some("log") && parts.method != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    // A container's log is text, whatever the client accepts.
    if !accepts_json(parts) && subresource != Some("log") {
        return Err(ApiError::not_acceptable("application/json"));
    }
    if shared.authorization
        && let Some(user) = user
    {
        let q = query(parts);
        let verb = match (&parts.method, name) {
            (&Method::GET, None) if q.get("watch").is_some_and(|v| v == "true" || v == "1") => "watch",
            (&Method::GET, None) => "list",
            (&Method::GET, Some(_)) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, None) => "deletecollection",
            (&Method::DELETE, Some(_)) => "delete",
            _ => "unknown",
        };
        let request = crate::rbac::Request {
            user,
            verb,
            rt: &rt,
            subresource,
            namespace,
            name,
        };
        crate::rbac::authorize(&store, &request)?;
    }
    let ns = namespace.unwrap_or("");
    let q = query(parts);
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let list_options = || -> Result<ListOptions, ApiError> {
        Ok(ListOptions {
            labels: LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?,
            fields: FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))?,
            limit: q.get("limit").and_then(|l| l.parse().ok()),
            continue_token: q.get("continue").cloned(),
        })
    };
    let write = WriteOptions {
        field_manager: q
            .get("fieldManager")
            .cloned()
            .unwrap_or_else(|| default_manager(parts)),
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
        force: flag("force"),
        user: user.map_or("system:anonymous", |u| u.name.as_str()).to_string(),
        groups: user.map(|u| u.groups.clone()).unwrap_or_default(),
    };
    let parse_body = || -> Result<Value, ApiError> {
        let content_type = parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if content_type.contains("protobuf") || content_type.contains("cbor") {
            // Typed Go clients (kubectl create configmap|secret|namespace) send protobuf.
            return crate::protobuf::decode(body)
                .ok_or_else(|| ApiError::unsupported_media_type("application/json, application/yaml"));
        }
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding the body: {e}")))
    };
    let table = wants_table(parts);
    match (&parts.method, name) {
        (&Method::GET, None) if flag("watch") => {
            let opts = list_options()?;
            let params = WatchParams {
                rt: rt.clone(),
                namespace: namespace.map(String::from),
                selectors: opts,
                bookmarks: flag("allowWatchBookmarks"),
                initial_events_end: flag("sendInitialEvents"),
                timeout: q
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse().ok())
                    .map(Duration::from_secs),
                bookmark_interval: shared.bookmark_interval,
                table,
            };
            let started = store.watch(
                &rt,
                namespace,
                q.get("resourceVersion").map(String::as_str),
                flag("sendInitialEvents"),
            );
            drop(store);
            let receiver = match started {
                Ok((initial, rv, rx)) => watch::spawn(initial, rv, rx, params),
                Err(err) => {
                    // The API server answers 200 and reports a too-old version as an ERROR event.
                    let (tx, rx) = tokio::sync::mpsc::channel(1);
                    let _ = tx.try_send(watch::error_line(&err));
                    rx
                }
            };
            let stream = futures_util::stream::unfold(receiver, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
            });
            Ok(Response::builder()
                .header("Content-Type", "application/json")
                .header("Transfer-Encoding", "chunked")
                .body(StreamBody::new(stream).boxed())
                .expect("valid"))
        }
        (&Method::GET, None) => {
            let list = store.list(&rt, namespace, &list_options()?)?;
            Ok(json_response(
                200,
                &if table { table::from_list(&rt, &list) } else { list },
            ))
        }
        (&Method::GET, Some(name)) if subresource == Some("log") => {
            // No container runs here: a pod's log is its LOG_ANNOTATION, as its container would
            // have printed it (tests give the real container a command that prints the same).
            let object = store.get(&rt, ns, name)?;
            let log = object["metadata"]["annotations"][LOG_ANNOTATION]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !flag("follow") {
                return Ok(Response::builder()
                    .header("Content-Type", "text/plain")
                    .body(Full::new(Bytes::from(log)).boxed())
                    .expect("static response parts are valid"));
            }
            // Followed: the log so far, then the stream stays open (a container that runs on)
            // until the client goes away.
            let stream = futures_util::StreamExt::chain(
                futures_util::stream::once(async move { Ok::<_, Infallible>(Frame::data(Bytes::from(log))) }),
                futures_util::stream::pending(),
            );
            Ok(Response::builder()
                .header("Content-Type", "text/plain")
                .header("Transfer-Encoding", "chunked")
                .body(StreamBody::new(stream).boxed())
                .expect("static response parts are valid"))
        }
        (&Method::GET, Some(name)) => {
            let object = store.get(&rt, ns, name)?;
            Ok(json_response(
                200,
                &if table {
                    table::from_object(&rt, &object)
                } else {
                    object
                },
            ))
        }
        (&Method::POST, None) if !rt.namespaced || namespace.is_some() => {
            Ok(json_response(201, &store.create(&rt, ns, parse_body()?, &write)?))
        }
        (&Method::PUT, Some(name)) => Ok(json_response(
            200,
            &store.update(&rt, ns, name, parse_body()?, subresource, &write)?,
        )),
        (&Method::PATCH, Some(name)) => {
            let content_type = parts
                .headers
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/merge-patch+json");
            let (object, created) = store.patch(&rt, ns, name, content_type, body, subresource, &write)?;
            Ok(json_response(if created { 201 } else { 200 }, &object))
        }
        (&Method::DELETE, name) => {
            let mut opts = DeleteOptions {
                dry_run: write.dry_run,
                user: write.user.clone(),
                groups: write.groups.clone(),
                ..Default::default()
            };
            let options: Value = if body.is_empty() {
                Value::Null
            } else {
                parse_body()?
            };
            let policy = options["propagationPolicy"]
                .as_str()
                .map(String::from)
                .or_else(|| q.get("propagationPolicy").cloned());
            opts.orphan =
                policy.as_deref() == Some("Orphan") || options["orphanDependents"].as_bool() == Some(true);
            opts.uid = options["preconditions"]["uid"].as_str().map(String::from);
            opts.resource_version = options["preconditions"]["resourceVersion"]
                .as_str()
                .map(String::from);
            if options["dryRun"]
                .as_array()
                .is_some_and(|d| d.iter().any(|v| v == "All"))
            {
                opts.dry_run = true;
            }
            match name {
                Some(name) => Ok(json_response(200, &store.delete(&rt, ns, name, &opts)?)),
                None => {
                    let deleted = store.delete_collection(&rt, namespace, &list_options()?, &opts)?;
                    Ok(json_response(200, &deleted))
                }
            }
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(accept: &[&str]) -> Parts {
        let mut builder = Request::builder().uri("/api/v1/pods");
        for a in accept {
            builder = builder.header(hyper::header::ACCEPT, *a);
        }
        builder.body(()).expect("valid").into_parts().0
    }

    #[test]
    fn json_or_a_wildcard_must_be_acceptable() {
        for ok in [
            &[][..],
            &["application/json"],
            &["application/json;as=Table;v=v1;g=meta.k8s.io,application/json"],
            &["application/vnd.kubernetes.protobuf, */*"],
            &["application/vnd.kubernetes.protobuf", "application/*"],
        ] {
            assert!(accepts_json(&parts(ok)), "{ok:?}");
        }
        for refused in [
            &["application/vnd.kubernetes.protobuf"][..],
            &["application/vnd.kubernetes.protobuf;stream=watch"],
            &["application/yaml"],
            &["application/cbor, application/vnd.kubernetes.protobuf"],
        ] {
            assert!(!accepts_json(&parts(refused)), "{refused:?}");
        }
    }
}
