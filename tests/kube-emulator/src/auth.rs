//! Bearer-token authentication: each configured token is one user with its groups. (Authorization is
//! in [`crate::rbac`], and off unless configured.)

use hyper::HeaderMap;

/// A user of the emulated cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// `user.username`, also the kubeconfig user and context name.
    pub name: String,
    /// The bearer token that authenticates it.
    pub token: String,
    /// Its groups besides `system:authenticated`; `system:masters` bypasses RBAC, as on a cluster.
    pub groups: Vec<String>,
}

impl User {
    /// A user with a token derived from its name (tests need no secret tokens, only distinct ones).
    /// `admin` is in `system:masters`.
    pub fn new(name: &str) -> Self {
        Self {
            groups: if name == "admin" {
                vec!["system:masters".into()]
            } else {
                Vec::new()
            },
            name: name.into(),
            token: format!(
                "token-{}",
                name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
            ),
        }
    }
}

/// A credential nobody has (the request gets 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownCredential;

/// The user a request authenticates as: `Ok(None)` is anonymous (allowed only when the emulator
/// allows it).
pub fn authenticate<'a>(
    users: &'a [User],
    headers: &HeaderMap,
) -> Result<Option<&'a User>, UnknownCredential> {
    let Some(value) = headers.get(hyper::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(UnknownCredential)?;
    users
        .iter()
        .find(|u| u.token == token)
        .map(Some)
        .ok_or(UnknownCredential)
}

/// Who a request asks to act as, from its `Impersonate-User` and `Impersonate-Group` headers:
/// `Ok(None)` without them. Like the API server, groups need a user, and one user at most.
pub fn impersonation(headers: &HeaderMap) -> Result<Option<User>, &'static str> {
    let users: Vec<&str> = headers
        .get_all("impersonate-user")
        .iter()
        .map(|v| v.to_str().unwrap_or_default())
        .collect();
    let groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .collect();
    match users.as_slice() {
        [] if groups.is_empty() => Ok(None),
        [] => Err("impersonating groups requires impersonating a user"),
        [name] if !name.is_empty() => Ok(Some(User {
            name: (*name).to_string(),
            token: String::new(),
            groups,
        })),
        _ => Err("exactly one non-empty Impersonate-User header is allowed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impersonation_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(impersonation(&headers), Ok(None));
        headers.append("impersonate-group", "system:masters".parse().unwrap());
        assert!(impersonation(&headers).is_err(), "groups without a user");
        headers.append("impersonate-user", "admin".parse().unwrap());
        headers.append("impersonate-group", "ops".parse().unwrap());
        let user = impersonation(&headers).unwrap().unwrap();
        assert_eq!(user.name, "admin");
        assert_eq!(user.groups, ["system:masters", "ops"]);
        headers.append("impersonate-user", "other".parse().unwrap());
        assert!(impersonation(&headers).is_err(), "two users");
    }

    #[test]
    fn tokens_map_to_users() {
        let users = vec![User::new("alice"), User::new("operator")];
        let mut headers = HeaderMap::new();
        assert_eq!(authenticate(&users, &headers), Ok(None));
        headers.insert(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", users[1].token).parse().unwrap(),
        );
        assert_eq!(authenticate(&users, &headers).unwrap().unwrap().name, "operator");
        headers.insert(hyper::header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert!(authenticate(&users, &headers).is_err());
    }
}
