//! Failure by body: APIs that answer a failed step with 2xx and a JSON error
//! (`200 {"status":"fail"}`). A configured field/value match turns such an answer into a
//! failure: the step is not completed, and on a configured login it counts as an
//! authentication failure.

use serde_json::Value;

/// JSON answers larger than this are not judged (they count as their status says).
pub const MAX_BODY: usize = 16 * 1024;

/// The configured match: top-level JSON fields and the values that mean failure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailureMatch {
    pub fields: Vec<(String, Vec<String>)>,
    /// Templates (as flowguard names them) whose failures are authentication failures.
    pub auth: Vec<String>,
}

impl FailureMatch {
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Whether a complete body says the step failed. Not JSON, not an object, or no
    /// matching field: not a failure (the status stands).
    pub fn failed(&self, body: &[u8]) -> bool {
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
            return false;
        };
        self.fields.iter().any(|(field, values)| {
            map.get(field).is_some_and(|v| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                values.contains(&text)
            })
        })
    }

    /// The status an answer counts as: a matched failure is 401 on a configured login
    /// (an authentication failure) and 422 elsewhere (a failed step).
    pub fn effective_status(&self, status: u16, template_is_auth: bool, body: &[u8]) -> u16 {
        match (
            crate::slot::is_success(status) && self.failed(body),
            template_is_auth,
        ) {
            (true, true) => 401,
            (true, false) => 422,
            (false, _) => status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher() -> FailureMatch {
        FailureMatch {
            fields: vec![
                ("status".into(), vec!["fail".into(), "error".into()]),
                ("success".into(), vec!["false".into()]),
            ],
            auth: vec!["POST /users/v1/login".into()],
        }
    }

    #[test]
    fn a_2xx_with_a_json_error_is_a_failure() {
        let m = matcher();
        assert!(m.failed(br#"{"status":"fail","message":"bad password"}"#));
        assert!(m.failed(br#"{"success": false}"#));
        assert!(!m.failed(br#"{"status":"success","auth_token":"x"}"#));
        assert!(!m.failed(br#"[{"status":"fail"}]"#), "not an object");
        assert!(!m.failed(b"not json"));
        assert_eq!(m.effective_status(200, true, br#"{"status":"fail"}"#), 401);
        assert_eq!(
            m.effective_status(200, false, br#"{"status":"error"}"#),
            422
        );
        assert_eq!(m.effective_status(200, true, br#"{"status":"ok"}"#), 200);
        assert_eq!(m.effective_status(500, true, br#"{"status":"fail"}"#), 500);
    }
}
