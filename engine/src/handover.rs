//! Identity hand-over: the upstream's answer in one session issues the identity the
//! client will use next (a new session cookie, a token in a login answer's body), and
//! that identity continues the session's flow.
//!
//! Only an answer can create a link, never a value the client sent: a client cannot
//! attach its steps to someone else's session, nor borrow theirs.

use crate::session::{derive, json_field, SessionKey, Source, MAX_KEY_LEN};

/// The session a `set-cookie` value starts, if it sets one of the configured session
/// cookies (a deletion, `name=` or `Max-Age=0`, starts none).
pub fn from_set_cookie<'a>(sources: &[Source], set_cookie: &'a str) -> Option<SessionKey<'a>> {
    let mut parts = set_cookie.split(';');
    let (name, value) = parts.next()?.split_once('=')?;
    let (name, value) = (name.trim(), value.trim().trim_matches('"'));
    let deleted = parts.any(|attr| {
        let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
        k.trim().eq_ignore_ascii_case("max-age") && v.trim().starts_with(['0', '-'])
    });
    if value.is_empty() || deleted {
        return None;
    }
    let source = sources
        .iter()
        .find(|s| matches!(s, Source::Cookie(n) if n == name))?;
    (value.len() <= MAX_KEY_LEN).then(|| SessionKey {
        kind: source.kind(),
        value: value.into(),
    })
}

/// The session a token handed out in an answer's JSON body (the field at path `field`:
/// `auth_token`, or `user.token` inside a nested object) starts,
/// keyed as the first configured `authorization`-type source will key the requests that
/// send it (a JWT claim source keys it by its claim).
pub fn from_body(sources: &[Source], body: &[u8], field: &str) -> Option<SessionKey<'static>> {
    let token = json_field(body, field)?;
    let source = sources.iter().find(|s| {
        matches!(
            s,
            Source::Bearer | Source::Authorization(_) | Source::JwtClaim(_)
        )
    })?;
    let scheme = match source {
        Source::Authorization(schemes) => schemes.first().map_or("Bearer", String::as_str),
        _ => "Bearer",
    };
    // The token as the client will present it: the same code derives both keys.
    let header = format!("{scheme} {token}");
    let key = derive(
        std::slice::from_ref(source),
        |h| (h == "authorization").then_some(header.as_str()),
        None,
    )?;
    Some(SessionKey {
        kind: key.kind,
        value: key.value.into_owned().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Vec<Source> {
        vec![
            Source::Cookie("sid".into()),
            Source::Authorization(vec!["Token".into(), "Bearer".into()]),
            Source::Address,
        ]
    }

    #[test]
    fn a_new_session_cookie_is_handed_over() {
        let k = from_set_cookie(&sources(), "sid=abc123; Path=/; HttpOnly").unwrap();
        assert_eq!((k.kind, k.value.as_ref()), (1, "abc123"));
        assert!(from_set_cookie(&sources(), "theme=dark; Path=/").is_none());
        assert!(from_set_cookie(&sources(), "sid=; Max-Age=0").is_none());
        assert!(from_set_cookie(&sources(), "sid=old; Max-Age=0; Path=/").is_none());
        assert!(from_set_cookie(&sources(), "garbage").is_none());
    }

    #[test]
    fn a_token_in_the_body_is_keyed_as_its_requests_will_be() {
        let body = br#"{"user":{"name":"x"},"auth_token":"tok-1","status":"ok"}"#;
        let k = from_body(&sources(), body, "auth_token").unwrap();
        // What the client's next request derives from `Authorization: Token tok-1`.
        let next = derive(
            &sources(),
            |h| (h == "authorization").then_some("Token tok-1"),
            None,
        )
        .unwrap();
        assert_eq!((k.kind, k.value.as_ref()), (next.kind, next.value.as_ref()));
        assert!(from_body(&sources(), body, "token").is_none());
        assert!(from_body(&sources(), b"not json", "auth_token").is_none());
        assert!(from_body(&[Source::Address], body, "auth_token").is_none());
    }

    #[test]
    fn a_token_nested_in_the_answer_is_found_by_its_path() {
        // RealWorld (Conduit) answers a login `{"user": {..., "token": ...}}`.
        let body = br#"{"user":{"email":"a@b.c","token":"jwt.abc","bio":null,"tags":["x"]}}"#;
        let k = from_body(&sources(), body, "user.token").unwrap();
        assert_eq!(k.value.as_ref(), "jwt.abc");
        assert!(
            from_body(&sources(), body, "token").is_none(),
            "not at the top"
        );
        assert!(
            from_body(&sources(), body, "user.tags").is_none(),
            "an array"
        );
        assert!(from_body(&sources(), body, "user").is_none(), "an object");
        assert!(from_body(&sources(), body, "user.email.x").is_none());
        let deeper = br#"{"data":{"session":{"auth":{"token":"t-9"}}}}"#;
        assert_eq!(
            from_body(&sources(), deeper, "data.session.auth.token")
                .unwrap()
                .value
                .as_ref(),
            "t-9"
        );
        assert!(from_body(&sources(), br#"{"user":{"token":"#, "user.token").is_none());
    }

    #[test]
    fn a_jwt_in_the_body_is_keyed_by_its_claim() {
        use base64::Engine;
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"reader-7"}"#);
        let body = format!(r#"{{"token":"h.{payload}.s"}}"#);
        let sources = [Source::JwtClaim("sub".into())];
        let k = from_body(&sources, body.as_bytes(), "token").unwrap();
        assert_eq!((k.kind, k.value.as_ref()), (5, "reader-7"));
    }
}
