//! `GET /admin/v1/openapi.json`: the admin API's OpenAPI 3.1 document,
//! generated from the same route table the router is built from (see
//! `api::routes`), so a route cannot exist undocumented or be documented
//! without existing; a test probes every documented operation and every
//! undocumented method on the live listener.

use axum::http::Method;
use serde_json::{json, Map, Value};
use tollgate_config::resources::Kind;

/// What an operation takes as a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    /// A JSON object (a resource, a key request …).
    Json,
    /// A YAML or JSON configuration document (`apply`), or an OpenAPI document.
    Document,
}

/// One documented operation.
#[derive(Clone, Debug)]
pub struct Operation {
    pub method: Method,
    pub summary: &'static str,
    pub body: Body,
    /// The status of a successful answer.
    pub ok: u16,
}

impl Operation {
    pub fn new(method: Method, summary: &'static str, body: Body, ok: u16) -> Operation {
        Operation {
            method,
            summary,
            body,
            ok,
        }
    }
}

/// The operations of one path (`{kind}` stands for every resource kind).
#[derive(Clone, Debug)]
pub struct RouteDoc {
    pub path: &'static str,
    pub operations: Vec<Operation>,
}

/// The concrete paths a route stands for: `{kind}` expanded to each kind.
pub fn concrete_paths(path: &str) -> Vec<String> {
    if path.starts_with("/admin/v1/ai/{kind}") {
        // The AI kinds' own routes serve what `/admin/v1/{kind}` documents
        // for `ai/providers`, `ai/models` and `ai/prices`.
        return Vec::new();
    }
    if path.contains("{kind}") {
        Kind::ALL
            .iter()
            .map(|kind| path.replace("{kind}", kind.as_str()))
            .collect()
    } else {
        vec![path.to_string()]
    }
}

fn parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect()
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

/// Each resource kind's schema, derived from the configuration's types,
/// as components: `(name of the kind's schema by kind, every schema)`.
fn resource_components() -> (Vec<(Kind, String)>, Map<String, Value>) {
    let mut names = Vec::new();
    let mut schemas = Map::new();
    for kind in Kind::ALL {
        let schema = tollgate_config::schema::resource_schema(kind);
        // Definitions move to components, and references with them.
        let text = schema
            .to_string()
            .replace("\"#/$defs/", "\"#/components/schemas/");
        let mut schema: Value = serde_json::from_str(&text).expect("a schema re-parses");
        let name = schema["title"]
            .as_str()
            .map_or_else(|| kind.as_str().to_string(), str::to_string);
        if let Some(Value::Object(defs)) = schema.as_object_mut().and_then(|o| o.remove("$defs")) {
            schemas.extend(defs);
        }
        if let Some(object) = schema.as_object_mut() {
            object.remove("$schema");
        }
        schemas.insert(name.clone(), schema);
        names.push((kind, name));
    }
    (names, schemas)
}

/// The kind a concrete path is about, when it is `/admin/v1/<kind>[/{name}]`.
fn kind_of(path: &str) -> Option<Kind> {
    let rest = path.strip_prefix("/admin/v1/")?;
    let mut segments = rest.split('/');
    let kind = Kind::parse(segments.next()?)?;
    match (segments.next(), segments.next()) {
        (None, _) => Some(kind),
        (Some(name), None) if name.starts_with('{') => Some(kind),
        _ => None,
    }
}

/// The OpenAPI 3.1 document for `routes`.
pub fn document(routes: &[RouteDoc]) -> Value {
    let (kind_schemas, mut schemas) = resource_components();
    let reference = |kind: Kind| {
        let name = &kind_schemas
            .iter()
            .find(|(k, _)| *k == kind)
            .expect("every kind has a schema")
            .1;
        json!({ "$ref": format!("#/components/schemas/{name}") })
    };
    let mut paths = Map::new();
    for route in routes {
        for path in concrete_paths(route.path) {
            let mut item = Map::new();
            for op in &route.operations {
                let mut responses = Map::new();
                let ok_content = if path.ends_with("/export") {
                    json!({ "application/yaml": { "schema": { "type": "string" } } })
                } else {
                    json!({ "application/json": { "schema": { "type": "object" } } })
                };
                let ok_content = match kind_of(&path) {
                    Some(kind) if path.ends_with('}') || op.method == Method::POST => {
                        json!({ "application/json": { "schema": reference(kind) } })
                    }
                    Some(kind) => json!({ "application/json": { "schema": {
                        "type": "object",
                        "properties": {
                            "items": { "type": "array", "items": reference(kind) },
                            "next": { "type": ["string", "null"] }
                        }
                    } } }),
                    None => ok_content,
                };
                let ok = if op.ok == 204 {
                    json!({ "description": "done" })
                } else {
                    json!({ "description": "success", "content": ok_content })
                };
                responses.insert(op.ok.to_string(), ok);
                responses.insert(
                    "400".into(),
                    error_response("a malformed request or parameter"),
                );
                responses.insert("401".into(), error_response("no or an unknown admin token"));
                responses.insert(
                    "403".into(),
                    error_response("the caller's role may not do this"),
                );
                responses.insert(
                    "404".into(),
                    error_response("no such resource, or one the caller may not see"),
                );
                if op.method != Method::GET {
                    responses.insert(
                        "409".into(),
                        error_response("already exists, or an impossible transition"),
                    );
                    responses.insert(
                        "412".into(),
                        error_response("If-Match names another revision"),
                    );
                    responses.insert(
                        "422".into(),
                        error_response("the change does not validate: `errors` lists field paths"),
                    );
                }
                let mut operation = json!({
                    "summary": op.summary,
                    "operationId": operation_id(&op.method, &path),
                    "responses": responses,
                });
                let params = parameters(&path);
                if !params.is_empty() {
                    operation["parameters"] = Value::Array(params);
                }
                match op.body {
                    Body::None => {}
                    Body::Json => {
                        let schema = match kind_of(&path) {
                            Some(kind) if op.method != Method::PATCH => reference(kind),
                            _ => json!({ "type": "object" }),
                        };
                        operation["requestBody"] = json!({
                            "required": true,
                            "content": { "application/json": { "schema": schema } }
                        })
                    }
                    Body::Document => {
                        operation["requestBody"] = json!({
                            "required": true,
                            "content": {
                                "application/yaml": { "schema": { "type": "string" } },
                                "application/json": { "schema": { "type": "object" } }
                            }
                        })
                    }
                }
                item.insert(op.method.as_str().to_ascii_lowercase(), operation);
            }
            paths.insert(path, Value::Object(item));
        }
    }
    schemas.insert("Error".into(), error_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tollgate admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every operation needs `Authorization: Bearer <admin token>` (or a console session cookie); see docs/admin-api.md and docs/control-plane.md."
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "session": { "type": "apiKey", "in": "cookie", "name": "tollgate_session" }
            },
            "schemas": schemas,
        },
        "security": [{ "bearer": [] }, { "session": [] }],
        "paths": paths,
    })
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "request_id"],
                "properties": {
                    "code": { "type": "string" },
                    "message": { "type": "string" },
                    "request_id": { "type": "string" },
                    "errors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": { "path": { "type": "string" }, "message": { "type": "string" } }
                        }
                    }
                }
            }
        }
    })
}

/// `get_admin_v1_services_name`-style ids, unique per method and path.
fn operation_id(method: &Method, path: &str) -> String {
    let mut id = method.as_str().to_ascii_lowercase();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(
            segment
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_'),
        );
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_expand_and_parameters_are_declared() {
        let doc = document(&[RouteDoc {
            path: "/admin/v1/{kind}/{name}",
            operations: vec![Operation::new(Method::DELETE, "remove", Body::None, 204)],
        }]);
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), Kind::ALL.len());
        let op = &doc["paths"]["/admin/v1/services/{name}"]["delete"];
        assert_eq!(op["parameters"][0]["name"], "name");
        assert_eq!(op["operationId"], "delete_admin_v1_services_name");
        assert!(op["responses"]["204"].is_object());
        assert!(op["responses"]["412"].is_object());
    }

    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    out.push(target);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn resources_are_described_by_their_schemas_and_every_reference_resolves() {
        let doc = document(&[
            RouteDoc {
                path: "/admin/v1/{kind}",
                operations: vec![
                    Operation::new(Method::GET, "list", Body::None, 200),
                    Operation::new(Method::POST, "create", Body::Json, 201),
                ],
            },
            RouteDoc {
                path: "/admin/v1/{kind}/{name}",
                operations: vec![Operation::new(Method::PUT, "replace", Body::Json, 200)],
            },
        ]);
        let post = &doc["paths"]["/admin/v1/services"]["post"];
        assert_eq!(
            post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Service"
        );
        let list = &doc["paths"]["/admin/v1/apis"]["get"]["responses"]["200"];
        assert_eq!(
            list["content"]["application/json"]["schema"]["properties"]["items"]["items"]["$ref"],
            "#/components/schemas/Api"
        );
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        assert!(schemas["Service"]["properties"]["upstream"].is_object());
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 20, "{found:?}");
        for target in found {
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("a reference outside the components: {target}"));
            assert!(schemas.contains_key(name), "{target} does not resolve");
        }
    }
}
