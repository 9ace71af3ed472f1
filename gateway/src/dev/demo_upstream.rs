//! The demo upstream of `agentgate dev`: a slice of Okta's admin API, in memory, on loopback.
//!
//! It answers only requests carrying `Authorization: SSWS <token>` with the per-run token the
//! Connection's Secret holds, so a working request proves the gateway injected the credential: the
//! agent never has it. The data is fake but shaped like Okta's, with values the masking rules of
//! the dev policy should catch (emails, phone numbers, a card number in a free-text field).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper::{Method, StatusCode, header};
use serde_json::{Value, json};

use super::DevError;
use super::server::{self, DevRequest, DevResponse, Server};
use crate::config::SecretValue;

/// Most users the demo keeps; creating more is refused so a loop cannot eat memory.
pub const MAX_USERS: usize = 1000;

/// A fresh API token shaped like Okta's (`00` and 40 token characters), which the OktaApiToken
/// detector recognises should it ever leak into a response or a record.
pub fn random_api_token() -> Result<SecretValue, DevError> {
    use base64::Engine;
    let bytes = server::random_bytes::<30>()?;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    Ok(SecretValue::new(format!("00{encoded}").into_bytes()))
}

/// The demo's state: its token and its users.
#[derive(Debug)]
pub struct DemoState {
    token: SecretValue,
    users: Mutex<Vec<Value>>,
    next_id: AtomicU64,
}

impl DemoState {
    /// Seeded with three users.
    pub fn new(token: SecretValue) -> Self {
        Self {
            token,
            users: Mutex::new(seed_users()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Answers one request.
    pub fn handle(&self, req: &DevRequest) -> DevResponse {
        if !self.authorized(req) {
            return okta_error(StatusCode::UNAUTHORIZED, "E0000011", "Invalid token provided");
        }
        let path = req.uri().path().trim_end_matches('/');
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        match (req.method(), segments.as_slice()) {
            (&Method::GET, ["api", "v1", "users"]) => {
                server::json(StatusCode::OK, &Value::Array(self.lock_users().clone()))
            }
            (&Method::POST, ["api", "v1", "users"]) => self.create_user(req.body()),
            (&Method::GET, ["api", "v1", "users", id]) => match self.find(id) {
                Some(user) => server::json(StatusCode::OK, &user),
                None => not_found(id, "User"),
            },
            (&Method::DELETE, ["api", "v1", "users", id]) => {
                let mut users = self.lock_users();
                match users.iter().position(|u| matches_id(u, id)) {
                    Some(i) => {
                        users.remove(i);
                        server::empty(StatusCode::NO_CONTENT)
                    }
                    None => not_found(id, "User"),
                }
            }
            (&Method::GET, ["api", "v1", "groups"]) => server::json(StatusCode::OK, &groups()),
            (&Method::GET, ["api", "v1", "api-tokens"]) => server::json(StatusCode::OK, &api_tokens()),
            (_, ["api", "v1", "users" | "groups" | "api-tokens"] | ["api", "v1", "users", _]) => okta_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "E0000022",
                "The endpoint does not support the provided HTTP method",
            ),
            _ => okta_error(
                StatusCode::NOT_FOUND,
                "E0000007",
                &format!("Not found: Resource not found: {} (Resource)", printable(path)),
            ),
        }
    }

    /// `Authorization: SSWS <token>`, compared in constant time.
    fn authorized(&self, req: &DevRequest) -> bool {
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return false;
        };
        let Some(presented) = value.as_bytes().strip_prefix(b"SSWS ") else {
            return false;
        };
        aws_lc_rs::constant_time::verify_slices_are_equal(presented, self.token.expose()).is_ok()
    }

    fn lock_users(&self) -> std::sync::MutexGuard<'_, Vec<Value>> {
        // A panic elsewhere cannot leave a Vec of JSON values half-changed in a way that matters
        // for a demo; keep serving.
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn find(&self, id: &str) -> Option<Value> {
        self.lock_users().iter().find(|u| matches_id(u, id)).cloned()
    }

    fn create_user(&self, body: &[u8]) -> DevResponse {
        let Ok(Value::Object(mut user)) = serde_json::from_slice::<Value>(body) else {
            return okta_error(
                StatusCode::BAD_REQUEST,
                "E0000003",
                "The request body was not well-formed.",
            );
        };
        let login = user
            .get("profile")
            .and_then(|p| p.get("login"))
            .and_then(Value::as_str)
            .filter(|l| !l.is_empty())
            .map(str::to_string);
        let Some(login) = login else {
            return okta_error(
                StatusCode::BAD_REQUEST,
                "E0000001",
                "Api validation failed: login",
            );
        };
        let mut users = self.lock_users();
        if users.iter().any(|u| u["profile"]["login"] == login.as_str()) {
            return okta_error(
                StatusCode::BAD_REQUEST,
                "E0000001",
                "Api validation failed: login: An object with this field already exists in the current organization",
            );
        }
        if users.len() >= MAX_USERS {
            return okta_error(
                StatusCode::TOO_MANY_REQUESTS,
                "E0000047",
                &format!("The demo upstream keeps at most {MAX_USERS} users"),
            );
        }
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        user.insert("id".into(), json!(format!("00udevnew{n:011}")));
        user.insert("status".into(), json!("ACTIVE"));
        user.insert("created".into(), json!("2025-06-01T12:00:00.000Z"));
        user.remove("credentials");
        let user = Value::Object(user);
        users.push(user.clone());
        server::json(StatusCode::CREATED, &user)
    }
}

/// Serves [`DemoState`] on a loopback address.
#[derive(Debug)]
pub struct DemoUpstream {
    server: Server,
}

impl DemoUpstream {
    /// Serves the demo on `addr` (loopback only; port 0 picks a free port) with `token` as the only
    /// accepted SSWS token.
    pub async fn start(addr: SocketAddr, token: SecretValue) -> Result<Self, DevError> {
        let (listener, bound) = server::bind_loopback(addr).await?;
        let state = Arc::new(DemoState::new(token));
        let handler = Arc::new(move |req: &DevRequest| state.handle(req));
        let server = Server::spawn(listener, bound, "demo-upstream", handler);
        Ok(Self { server })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://host:port`, the Connection's endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", server::url_host(self.addr()))
    }
}

fn matches_id(user: &Value, id: &str) -> bool {
    // Okta accepts the id or the login (or its short form) wherever a user id goes.
    user["id"] == id || user["profile"]["login"] == id
}

fn okta_error(status: StatusCode, code: &str, summary: &str) -> DevResponse {
    let id = server::random_bytes::<12>()
        .map(|b| format!("oae{}", server::hex(&b)))
        .unwrap_or_else(|_| "oae".into());
    server::json(
        status,
        &json!({
            "errorCode": code,
            "errorSummary": summary,
            "errorLink": code,
            "errorId": id,
            "errorCauses": [],
        }),
    )
}

fn not_found(id: &str, kind: &str) -> DevResponse {
    okta_error(
        StatusCode::NOT_FOUND,
        "E0000007",
        &format!("Not found: Resource not found: {} ({kind})", printable(id)),
    )
}

/// Paths echoed in errors are cut short and stripped of control characters.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

fn seed_users() -> Vec<Value> {
    vec![
        json!({
            "id": "00udevalice000000001",
            "status": "ACTIVE",
            "created": "2024-01-15T09:30:00.000Z",
            "lastLogin": "2025-05-02T08:12:44.000Z",
            "profile": {
                "firstName": "Alice",
                "lastName": "Nguyen",
                "email": "alice.nguyen@example.com",
                "login": "alice.nguyen@example.com",
                "mobilePhone": "+1 415 555 0101",
                "department": "Finance",
                "notes": "Corporate card 4111 1111 1111 1111 on file for travel bookings"
            }
        }),
        json!({
            "id": "00udevbob00000000002",
            "status": "ACTIVE",
            "created": "2024-03-02T14:05:00.000Z",
            "lastLogin": "2025-05-01T17:40:10.000Z",
            "profile": {
                "firstName": "Bob",
                "lastName": "Okafor",
                "email": "bob.okafor@example.com",
                "login": "bob.okafor@example.com",
                "mobilePhone": "+44 20 7946 0958",
                "department": "Engineering",
                "notes": "On call this week"
            }
        }),
        json!({
            "id": "00udevcarol000000003",
            "status": "SUSPENDED",
            "created": "2024-07-21T08:00:00.000Z",
            "lastLogin": null,
            "profile": {
                "firstName": "Carol",
                "lastName": "Rossi",
                "email": "carol.rossi@example.com",
                "login": "carol.rossi@example.com",
                "mobilePhone": null,
                "department": "Support",
                "notes": "Suspended pending review; personal contact carol.r@example.org"
            }
        }),
    ]
}

fn groups() -> Value {
    json!([
        {"id": "00gdevengineering01", "type": "OKTA_GROUP",
         "profile": {"name": "Engineering", "description": "Everyone who ships code"}},
        {"id": "00gdevfinance000001", "type": "OKTA_GROUP",
         "profile": {"name": "Finance", "description": "Finance and accounting"}}
    ])
}

fn api_tokens() -> Value {
    // Okta never returns token values from this endpoint; metadata alone is what agents must not
    // manage, which the dev policy denies.
    json!([
        {"id": "00Tdevtoken00000001", "name": "ci-automation", "userId": "00udevbob00000000002",
         "clientName": "Okta API", "tokenWindow": "P30D",
         "created": "2025-01-10T10:00:00.000Z", "expiresAt": "2025-07-10T10:00:00.000Z",
         "network": {"connection": "ANYWHERE"}}
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::Request;
    use hyper::body::Bytes;

    fn state() -> (DemoState, String) {
        let token = random_api_token().unwrap();
        let text = String::from_utf8(token.expose().to_vec()).unwrap();
        (DemoState::new(token), text)
    }

    fn request(method: &str, path: &str, auth: Option<&str>, body: &str) -> DevRequest {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(Bytes::from(body.to_string())).unwrap()
    }

    async fn body(resp: DevResponse) -> Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        if bytes.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn tokens_look_like_okta_tokens() {
        let (_, token) = state();
        assert_eq!(token.len(), 42);
        assert!(token.starts_with("00"));
        assert_ne!(token, state().1);
    }

    #[tokio::test]
    async fn only_the_ssws_token_opens_it() {
        let (s, token) = state();
        // The last character changed (to one it is not: tokens are random).
        let last = if token.ends_with('x') { 'y' } else { 'x' };
        let wrong = format!("SSWS {}{last}", &token[..41]);
        let bearer = format!("Bearer {token}");
        let lower = format!("ssws {token}");
        for auth in [
            None,
            Some("SSWS "),
            Some(wrong.as_str()),
            Some(bearer.as_str()),
            Some(lower.as_str()),
        ] {
            let resp = s.handle(&request("GET", "/api/v1/users", auth, ""));
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
            assert_eq!(body(resp).await["errorCode"], "E0000011");
        }
        let ok = s.handle(&request(
            "GET",
            "/api/v1/users",
            Some(&format!("SSWS {token}")),
            "",
        ));
        assert_eq!(ok.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn users_can_be_listed_read_created_and_deleted() {
        let (s, token) = state();
        let auth = format!("SSWS {token}");
        let auth = Some(auth.as_str());
        let users = body(s.handle(&request("GET", "/api/v1/users?limit=200", auth, ""))).await;
        let users = users.as_array().unwrap();
        assert_eq!(users.len(), 3);
        for u in users {
            assert!(u["profile"]["email"].as_str().unwrap().contains("@example.com"));
            assert!(u["profile"]["login"].is_string());
            assert!(u["profile"].get("mobilePhone").is_some());
        }
        assert!(
            users[0]["profile"]["notes"]
                .as_str()
                .unwrap()
                .contains("4111 1111 1111 1111")
        );

        let alice = s.handle(&request("GET", "/api/v1/users/00udevalice000000001", auth, ""));
        assert_eq!(alice.status(), StatusCode::OK);
        assert_eq!(body(alice).await["profile"]["firstName"], "Alice");
        let by_login = s.handle(&request("GET", "/api/v1/users/bob.okafor@example.com", auth, ""));
        assert_eq!(body(by_login).await["id"], "00udevbob00000000002");

        let created = s.handle(&request(
            "POST",
            "/api/v1/users?activate=true",
            auth,
            r#"{"profile":{"login":"dana@example.com","email":"dana@example.com"},"credentials":{"password":{"value":"x"}}}"#,
        ));
        assert_eq!(created.status(), StatusCode::CREATED);
        let created = body(created).await;
        assert!(created.get("credentials").is_none(), "passwords are not echoed");
        let id = created["id"].as_str().unwrap().to_string();
        let again = s.handle(&request(
            "POST",
            "/api/v1/users",
            auth,
            r#"{"profile":{"login":"dana@example.com"}}"#,
        ));
        assert_eq!(again.status(), StatusCode::BAD_REQUEST);
        let bad = s.handle(&request("POST", "/api/v1/users", auth, "not json"));
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let no_login = s.handle(&request("POST", "/api/v1/users", auth, r#"{"profile":{}}"#));
        assert_eq!(no_login.status(), StatusCode::BAD_REQUEST);

        let deleted = s.handle(&request("DELETE", &format!("/api/v1/users/{id}"), auth, ""));
        assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
        let gone = s.handle(&request("GET", &format!("/api/v1/users/{id}"), auth, ""));
        assert_eq!(gone.status(), StatusCode::NOT_FOUND);
        assert_eq!(body(gone).await["errorCode"], "E0000007");
        let twice = s.handle(&request("DELETE", &format!("/api/v1/users/{id}"), auth, ""));
        assert_eq!(twice.status(), StatusCode::NOT_FOUND);

        let tokens = body(s.handle(&request("GET", "/api/v1/api-tokens", auth, ""))).await;
        assert_eq!(tokens[0]["name"], "ci-automation");
        let groups = s.handle(&request("GET", "/api/v1/groups", auth, ""));
        assert_eq!(groups.status(), StatusCode::OK);
        let put = s.handle(&request("PUT", "/api/v1/users", auth, ""));
        assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
        let other = s.handle(&request("GET", "/api/v1/apps", auth, ""));
        assert_eq!(other.status(), StatusCode::NOT_FOUND);
    }

    /// Over the network with a real HTTP client: the same answers.
    #[tokio::test]
    async fn serves_over_loopback_http() {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;

        let token = random_api_token().unwrap();
        let ssws = format!("SSWS {}", String::from_utf8(token.expose().to_vec()).unwrap());
        let upstream = DemoUpstream::start("127.0.0.1:0".parse().unwrap(), token)
            .await
            .unwrap();
        assert!(upstream.url().starts_with("http://127.0.0.1:"));
        let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Full<Bytes>>();
        let get = |auth: Option<String>| {
            let mut b = Request::builder().uri(format!("{}/api/v1/users", upstream.url()));
            if let Some(a) = auth {
                b = b.header("authorization", a);
            }
            client.request(b.body(http_body_util::Full::new(Bytes::new())).unwrap())
        };
        let denied = get(None).await.unwrap();
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
        let denied = get(Some("SSWS 00nottherighttoken".into())).await.unwrap();
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
        let ok = get(Some(ssws)).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()["content-type"], "application/json; charset=utf-8");
        let users: Value =
            serde_json::from_slice(&ok.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(users.as_array().unwrap().len(), 3);

        let err = DemoUpstream::start("0.0.0.0:0".parse().unwrap(), random_api_token().unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, DevError::NotLoopback { .. }), "{err}");
    }
}
