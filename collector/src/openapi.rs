//! OpenAPI import: the endpoint templates (and retired operations) an API declares, as
//! flowguard's `endpoints` configuration. Declared templates win over inference, so a
//! spec gives the filter the API's real shape from the first request.
//!
//! Reads OpenAPI 3.0 and 3.1 (JSON or YAML): each `paths` entry and operation becomes
//! `METHOD /base/path/{param}`, where the base is the path of the first `servers` URL
//! (path-level `servers` win, as the spec says) unless `--base-path` overrides it.
//! Operations marked `deprecated: true` are listed in `endpoints.deprecated` (zombie
//! endpoints). A segment that mixes a parameter with text (`{name}.json`) becomes one
//! wildcard: flowguard templates match whole segments.

use serde_json::{json, Map, Value};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// What a spec declares.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub templates: Vec<String>,
    pub deprecated: Vec<String>,
}

/// Parses a spec from JSON or YAML text.
pub fn parse(text: &str) -> Result<Value, String> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Ok(v);
    }
    let yaml: serde_norway::Value =
        serde_norway::from_str(text).map_err(|e| format!("neither JSON nor YAML: {e}"))?;
    serde_json::to_value(yaml).map_err(|e| format!("YAML that is not JSON-shaped: {e}"))
}

/// The templates of `spec`; `base` overrides the servers' base path.
pub fn import(spec: &Value, base: Option<&str>) -> Result<Imported, String> {
    let version = spec
        .get("openapi")
        .and_then(Value::as_str)
        .ok_or("openapi: missing (Swagger 2.0 is not supported; convert it to OpenAPI 3)")?;
    if !(version.starts_with("3.0") || version.starts_with("3.1")) {
        return Err(format!("openapi: expected 3.0 or 3.1, got {version:?}"));
    }
    let paths = spec
        .get("paths")
        .and_then(Value::as_object)
        .ok_or("paths: missing or not an object")?;
    let top_base = base.map(str::to_owned).unwrap_or_else(|| server_base(spec));
    let mut out = Imported::default();
    for (path, item) in paths {
        if !path.starts_with('/') {
            return Err(format!("paths.{path}: expected a path starting with '/'"));
        }
        let Some(item) = item.as_object() else {
            continue; // a $ref to another document: nothing to read here
        };
        let base = match base {
            Some(b) => b.to_owned(),
            None if item.contains_key("servers") => server_base(&Value::Object(item.clone())),
            None => top_base.clone(),
        };
        let mut template_path = format!("{}{}", base.trim_end_matches('/'), whole_segments(path));
        if template_path.is_empty() {
            template_path.push('/');
        }
        for method in METHODS {
            let Some(op) = item.get(method).and_then(Value::as_object) else {
                continue;
            };
            let template = format!("{} {template_path}", method.to_ascii_uppercase());
            if op.get("deprecated").and_then(Value::as_bool) == Some(true) {
                out.deprecated.push(template.clone());
            }
            if !out.templates.contains(&template) {
                out.templates.push(template);
            }
        }
    }
    Ok(out)
}

/// The path of the first server URL (`https://api.example.com/v1` -> `/v1`), with
/// server variables at their defaults.
fn server_base(doc: &Value) -> String {
    let Some(server) = doc
        .get("servers")
        .and_then(Value::as_array)
        .and_then(|s| s.first())
    else {
        return String::new();
    };
    let mut url = server
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(vars) = server.get("variables").and_then(Value::as_object) {
        for (name, var) in vars {
            let default = var
                .get("default")
                .and_then(Value::as_str)
                .unwrap_or_default();
            url = url.replace(&format!("{{{name}}}"), default);
        }
    }
    let path = match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => url.as_str(),
    };
    path.trim_end_matches('/').to_owned()
}

/// `/files/{name}.json` -> `/files/{name}`: a parameter inside a segment makes it one.
fn whole_segments(path: &str) -> String {
    let mut out = String::new();
    for s in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        match (s.find('{'), s.find('}')) {
            (Some(a), Some(b)) if a < b => out.push_str(&s[a..=b]),
            _ => out.push_str(s),
        }
    }
    out
}

/// `config` (a plugin configuration) with the imported templates added to
/// `endpoints.templates` and `endpoints.deprecated` (existing entries first, no
/// duplicates).
pub fn merge_into(config: &mut Value, imported: &Imported) -> Result<(), String> {
    let root = config
        .as_object_mut()
        .ok_or("the plugin configuration is not a JSON object")?;
    let endpoints = root
        .entry("endpoints")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or("endpoints: not an object")?;
    for (key, new) in [
        ("templates", &imported.templates),
        ("deprecated", &imported.deprecated),
    ] {
        let list = endpoints
            .entry(key)
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .ok_or(format!("endpoints.{key}: not an array"))?;
        for t in new {
            if !list.iter().any(|v| v.as_str() == Some(t)) {
                list.push(Value::String(t.clone()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_operations_servers_and_deprecation() {
        let spec = parse(
            r#"openapi: 3.1.0
servers: [{url: "https://{region}.api.example.com/v2", variables: {region: {default: eu}}}]
paths:
  /users/{name}/email: {put: {deprecated: true}, get: {}}
  /files/{id}.json: {get: {}}
  /health: {servers: [{url: /}], get: {}}
"#,
        )
        .unwrap();
        let got = import(&spec, None).unwrap();
        assert_eq!(
            got.templates,
            [
                "GET /v2/files/{id}",
                "GET /health",
                "GET /v2/users/{name}/email",
                "PUT /v2/users/{name}/email"
            ]
        );
        assert_eq!(got.deprecated, ["PUT /v2/users/{name}/email"]);
        assert_eq!(
            import(&spec, Some("/")).unwrap().templates[0],
            "GET /files/{id}"
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(import(&json!({"swagger": "2.0", "paths": {}}), None)
            .unwrap_err()
            .contains("Swagger 2.0"));
        assert!(import(&json!({"openapi": "3.0.3"}), None)
            .unwrap_err()
            .starts_with("paths"));
        assert!(parse("{ not: [json").is_err());
    }

    #[test]
    fn merges_into_a_configuration_without_duplicates() {
        let mut config = json!({"mode": "enforce", "endpoints": {"templates": ["GET /a/{x}"]}});
        let imported = Imported {
            templates: vec!["GET /a/{x}".into(), "POST /b".into()],
            deprecated: vec!["GET /old".into()],
        };
        merge_into(&mut config, &imported).unwrap();
        assert_eq!(
            config["endpoints"]["templates"],
            json!(["GET /a/{x}", "POST /b"])
        );
        assert_eq!(config["endpoints"]["deprecated"], json!(["GET /old"]));
        assert_eq!(config["mode"], "enforce");
    }
}
