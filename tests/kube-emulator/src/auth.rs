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

#[cfg(test)]
mod tests {
    use super::*;

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
