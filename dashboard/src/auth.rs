//! The dashboard's token: who may read and act through it once it listens beyond
//! loopback.
//!
//! Without a token the dashboard serves anyone who reaches its port, which is why it
//! binds 127.0.0.1 by default and refuses any other address without one. With a token
//! every API path (and `/metrics`) needs it, either as `Authorization: Bearer TOKEN`
//! (scripts, Prometheus) or as a session that the page opens by posting the token to
//! `/api/session`. A session is a random id in an `HttpOnly`, `SameSite=Strict` cookie;
//! it comes with a CSRF value in a second cookie the page can read, which every POST
//! made with the session must echo in the [`CSRF_HEADER`] header: another site's page
//! can neither send the cookies nor read the value. The page and its static assets are
//! served to anyone: they hold no data.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest token accepted: a guessable one would only look like protection.
pub const MIN_TOKEN_LEN: usize = 16;
/// How long a session opened from the token lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; opening one more forgets the oldest.
pub const MAX_SESSIONS: usize = 1024;
/// The session cookie (`HttpOnly`: scripts never see it).
pub const SESSION_COOKIE: &str = "pypelinin_session";
/// The cookie holding the session's CSRF value, read by the page's script.
pub const CSRF_COOKIE: &str = "pypelinin_csrf";
/// The header in which a POST made with a session echoes its CSRF value.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Why a token was refused at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Too short to resist guessing.
    #[error("the dashboard token has {len} characters; at least {MIN_TOKEN_LEN} are needed")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Holds whitespace or control characters, which headers and cookies mangle.
    #[error("the dashboard token may not hold spaces or control characters")]
    BadCharacter,
}

/// How a request proved it may be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// No token is configured: everyone may.
    Open,
    /// The token itself, as a bearer header: no CSRF check (browsers never add it on
    /// their own).
    Bearer,
    /// A session cookie; its CSRF value, which POSTs must echo.
    Session {
        /// The value the page must send back in [`CSRF_HEADER`].
        csrf: String,
    },
}

struct Session {
    csrf: String,
    opened: Instant,
}

/// The token and the sessions opened from it.
pub struct Auth {
    token: String,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Auth {
    /// Checks `token` and keeps it.
    pub fn new(token: &str) -> Result<Auth, TokenError> {
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TokenError::BadCharacter);
        }
        let len = token.chars().count();
        if len < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort { len });
        }
        Ok(Auth {
            token: token.to_string(),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `given` is the token, compared in time that does not depend on where
    /// the two first differ.
    pub fn is_token(&self, given: &str) -> bool {
        let (a, b) = (self.token.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Opens a session for someone who gave the token: its id and CSRF value.
    pub fn open_session(&self) -> (String, String) {
        let id = random_hex();
        let csrf = random_hex();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.opened.elapsed() < SESSION_TTL);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.opened)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                opened: Instant::now(),
            },
        );
        (id, csrf)
    }

    /// The CSRF value of session `id`, if it is open and not expired.
    pub fn session(&self, id: &str) -> Option<String> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(id)
            .filter(|s| s.opened.elapsed() < SESSION_TTL)
            .map(|s| s.csrf.clone())
    }

    /// Ends session `id`.
    pub fn close_session(&self, id: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(id);
    }

    /// What a request with these `Authorization` and `Cookie` headers proves.
    pub fn check(&self, authorization: Option<&str>, cookies: Option<&str>) -> Option<Proof> {
        if let Some(given) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
            return self.is_token(given.trim()).then_some(Proof::Bearer);
        }
        let id = cookie(cookies?, SESSION_COOKIE)?;
        self.session(id).map(|csrf| Proof::Session { csrf })
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// 256 random bits as hex, from the operating system's generator (through uuid's v4).
fn random_hex() -> String {
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    format!("{}{}", a.simple(), b.simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "correct-horse-battery-staple";

    #[test]
    fn short_or_spaced_tokens_are_refused() {
        assert_eq!(
            Auth::new("short").err(),
            Some(TokenError::TooShort { len: 5 })
        );
        assert_eq!(
            Auth::new("has a space in it, long enough").err(),
            Some(TokenError::BadCharacter)
        );
        assert!(Auth::new(TOKEN).is_ok());
    }

    #[test]
    fn only_the_token_itself_passes() {
        let auth = Auth::new(TOKEN).unwrap();
        assert!(auth.is_token(TOKEN));
        assert!(!auth.is_token("correct-horse-battery-stapl"));
        assert!(!auth.is_token("correct-horse-battery-staplf"));
        assert!(!auth.is_token(""));
        assert_eq!(
            auth.check(Some(&format!("Bearer {TOKEN}")), None),
            Some(Proof::Bearer)
        );
        assert_eq!(auth.check(Some("Bearer nope"), None), None);
        assert_eq!(auth.check(None, None), None);
    }

    #[test]
    fn sessions_carry_their_csrf_value_until_closed() {
        let auth = Auth::new(TOKEN).unwrap();
        let (id, csrf) = auth.open_session();
        assert_eq!(id.len(), 64);
        assert_ne!(id, csrf);
        let header = format!("theme=dark; {SESSION_COOKIE}={id}; other=1");
        assert_eq!(
            auth.check(None, Some(&header)),
            Some(Proof::Session { csrf: csrf.clone() })
        );
        assert_eq!(
            auth.check(None, Some(&format!("{SESSION_COOKIE}=forged"))),
            None
        );
        auth.close_session(&id);
        assert_eq!(auth.check(None, Some(&header)), None);
    }

    #[test]
    fn the_oldest_session_goes_when_too_many_are_open() {
        let auth = Auth::new(TOKEN).unwrap();
        let (first, _) = auth.open_session();
        for _ in 1..MAX_SESSIONS {
            auth.open_session();
        }
        assert!(auth.session(&first).is_some());
        let (newest, _) = auth.open_session();
        assert!(auth.session(&first).is_none(), "the oldest was forgotten");
        assert!(auth.session(&newest).is_some());
    }
}
