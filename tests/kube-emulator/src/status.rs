//! `metav1.Status` failures shaped like the real API server's, so kubectl and kube-rs print and match
//! on them exactly as they would against a cluster.

use serde_json::{Value, json};

use agentgate_crds::validation::FieldError;

/// A failed request: becomes a `Status` body with `code` as the HTTP status.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `metav1.StatusReason`.
    pub reason: &'static str,
    /// Human readable message, worded like the API server's.
    pub message: String,
    /// `details`, when the API server sends them.
    pub details: Option<Value>,
}

/// What the error messages need to know about a resource: how the API server names it.
#[derive(Clone, Copy, Debug)]
pub struct Names<'a> {
    /// API group (empty for core).
    pub group: &'a str,
    /// Plural resource name, e.g. `accesspolicies`.
    pub plural: &'a str,
    /// Kind, e.g. `AccessPolicy`.
    pub kind: &'a str,
}

impl Names<'_> {
    /// `accesspolicies.agentgate.dev`, or `secrets` for the core group (`GroupResource.String()`).
    pub fn group_resource(&self) -> String {
        qualified(self.plural, self.group)
    }

    /// `AccessPolicy.agentgate.dev`, or `Secret` (`GroupKind.String()`).
    pub fn group_kind(&self) -> String {
        qualified(self.kind, self.group)
    }
}

fn qualified(name: &str, group: &str) -> String {
    if group.is_empty() {
        name.to_string()
    } else {
        format!("{name}.{group}")
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 404 for a named object.
    pub fn not_found(names: Names<'_>, name: &str) -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", names.group_resource()),
        );
        e.details = Some(json!({"name": name, "group": names.group, "kind": names.plural}));
        e
    }

    /// 404 for a path the emulator does not serve.
    pub fn path_not_found() -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        e.details = Some(json!({}));
        e
    }

    /// 409 on create of an existing name.
    pub fn already_exists(names: Names<'_>, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", names.group_resource()),
        );
        e.details = Some(json!({"name": name, "group": names.group, "kind": names.plural}));
        e
    }

    /// 409 on a stale `resourceVersion`.
    pub fn conflict(names: Names<'_>, name: &str) -> Self {
        Self::conflict_with(
            names,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 with a specific cause (server-side apply conflicts, UID preconditions).
    pub fn conflict_with(names: Names<'_>, name: &str, why: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                names.group_resource()
            ),
        );
        e.details = Some(json!({"name": name, "group": names.group, "kind": names.plural}));
        e
    }

    /// 422 with field causes: `Kind.group "name" is invalid: path: detail` (several errors are listed
    /// in brackets, as `ErrorList.ToAggregate()` prints them).
    pub fn invalid(names: Names<'_>, name: &str, errors: &[FieldError]) -> Self {
        let summary = if errors.len() == 1 {
            errors[0].to_string()
        } else {
            format!(
                "[{}]",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.kind.reason(), "message": e.detail, "field": e.path}))
            .collect();
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {summary}", names.group_kind()),
        );
        e.details = Some(json!({"name": name, "group": names.group, "kind": names.kind, "causes": causes}));
        e
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401, worded as the API server words it.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403.
    pub fn forbidden(names: Names<'_>, name: &str, why: &str) -> Self {
        let mut e = Self::new(
            403,
            "Forbidden",
            format!("{} \"{name}\" is forbidden: {why}", names.group_resource()),
        );
        e.details = Some(json!({"name": name, "group": names.group, "kind": names.plural}));
        e
    }

    /// 403 from authorization: `secrets is forbidden: User "u" cannot list resource "secrets" in API
    /// group "" in the namespace "ns"` (with the object's name when there is one).
    pub fn forbidden_by_rbac(names: Names<'_>, name: Option<&str>, why: &str) -> Self {
        let subject = match name {
            Some(n) => format!("{} \"{n}\"", names.group_resource()),
            None => names.group_resource(),
        };
        let mut e = Self::new(403, "Forbidden", format!("{subject} is forbidden: {why}"));
        e.details =
            Some(json!({"name": name.unwrap_or_default(), "group": names.group, "kind": names.plural}));
        e
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// 406: the client accepts no encoding the emulator writes.
    pub fn not_acceptable(accepted: &str) -> Self {
        Self::new(
            406,
            "NotAcceptable",
            format!("only the following media types are accepted: {accepted}"),
        )
    }

    /// 415.
    pub fn unsupported_media_type(accepted: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {accepted}"
            ),
        )
    }

    /// 422 without field causes (a patch that cannot be applied).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// 409 for server-side apply conflicts, with one cause per field.
    pub fn apply_conflict(message: String, causes: Vec<Value>) -> Self {
        let mut e = Self::new(409, "Conflict", message);
        e.details = Some(json!({"causes": causes}));
        e
    }

    /// 410 for a watch or continue token older than the retained history.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// The `Status` a successful delete of a whole collection or a namespace-less delete returns.
pub fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentgate_crds::validation::FieldErrorKind;

    const POLICY: Names<'static> = Names {
        group: "agentgate.dev",
        plural: "accesspolicies",
        kind: "AccessPolicy",
    };

    #[test]
    fn invalid_reads_like_the_api_server() {
        let err = FieldError {
            path: "spec.rules[0].action".into(),
            kind: FieldErrorKind::NotSupported,
            detail: "Unsupported value: \"Maybe\": supported values: \"Allow\", \"Deny\"".into(),
        };
        let status = ApiError::invalid(POLICY, "x", &[err]).to_status();
        assert_eq!(
            status["message"],
            "AccessPolicy.agentgate.dev \"x\" is invalid: spec.rules[0].action: Unsupported value: \"Maybe\": supported values: \"Allow\", \"Deny\""
        );
        assert_eq!(status["code"], 422);
        assert_eq!(status["details"]["causes"][0]["reason"], "FieldValueNotSupported");
        assert_eq!(status["details"]["causes"][0]["field"], "spec.rules[0].action");
    }

    #[test]
    fn core_group_names_have_no_suffix() {
        let names = Names {
            group: "",
            plural: "secrets",
            kind: "Secret",
        };
        assert_eq!(ApiError::not_found(names, "s").message, "secrets \"s\" not found");
        assert_eq!(
            ApiError::not_found(POLICY, "p").message,
            "accesspolicies.agentgate.dev \"p\" not found"
        );
    }
}
