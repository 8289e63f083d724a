//! An API described as an OpenAPI 3.1 document: what the developer portal
//! renders, and `GET /admin/v1/apis/<name>/openapi.json` serves. The
//! reverse of [`crate::openapi::import`], from what the gateway knows: the
//! paths and methods it routes, the request body schema its `validate`
//! policy checks, the credentials its `auth` policy accepts, and where the
//! API is in its life. What the upstream answers is not the gateway's to
//! know: each operation has a `default` response.

use serde_json::{json, Map, Value};

use crate::model::{Api, Lifecycle};
use crate::policy::AuthMethod;

/// The methods an API that matches any method is documented with.
const ANY_METHOD: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// `api` as an OpenAPI 3.1 document.
pub fn describe(api: &Api) -> Value {
    let methods: Vec<String> = if api.matcher.methods.is_empty() {
        ANY_METHOD.iter().map(|m| m.to_string()).collect()
    } else {
        api.matcher
            .methods
            .iter()
            .map(|m| m.to_ascii_lowercase())
            .filter(|m| m != "head")
            .collect()
    };
    let auth = api.policies.auth.as_ref();
    let mut schemes = Map::new();
    let mut security = Vec::new();
    if let Some(auth) = auth {
        for method in &auth.methods {
            let (name, scheme) = match method {
                AuthMethod::Key => (
                    "apiKey",
                    json!({ "type": "apiKey", "in": "header", "name": auth.key_header }),
                ),
                AuthMethod::Jwt | AuthMethod::Introspection => {
                    ("bearer", json!({ "type": "http", "scheme": "bearer" }))
                }
                AuthMethod::Basic => ("basic", json!({ "type": "http", "scheme": "basic" })),
                AuthMethod::Mtls => ("mutualTLS", json!({ "type": "mutualTLS" })),
            };
            if schemes.insert(name.to_string(), scheme).is_none() {
                security.push(json!({ name: [] }));
            }
        }
    }
    let schema = api
        .policies
        .validate
        .as_ref()
        .and_then(|v| v.json_schema.clone());
    let mut paths = Map::new();
    for pattern in &api.matcher.paths {
        let (path, prefix) = match pattern.strip_prefix('=') {
            Some(exact) => (exact.to_string(), false),
            None => (pattern.clone(), pattern != "/"),
        };
        let mut item = Map::new();
        for method in &methods {
            let mut operation = json!({
                "operationId": format!("{}-{method}", api.name),
                "responses": { "default": { "description": "the upstream's answer" } },
            });
            if prefix {
                operation["description"] = json!(format!("Also every path under `{path}/`."));
            }
            if let Some(schema) = &schema {
                if method != "get" && method != "delete" {
                    operation["requestBody"] = json!({
                        "required": true,
                        "content": { "application/json": { "schema": schema } },
                    });
                }
            }
            if !security.is_empty() {
                operation["security"] = Value::Array(security.clone());
            }
            item.insert(method.clone(), operation);
        }
        paths.insert(path, Value::Object(item));
    }
    let mut info = json!({
        "title": api.name,
        "version": api.version.clone().unwrap_or_else(|| "1".to_string()),
    });
    if api.lifecycle == Lifecycle::Deprecated {
        let mut note = String::from("Deprecated");
        if let Some(sunset) = &api.sunset {
            note.push_str(&format!(": served until {sunset}"));
        }
        if let Some(successor) = &api.successor {
            note.push_str(&format!("; use `{successor}` instead"));
        }
        info["description"] = json!(format!("{note}."));
    }
    let mut document = json!({
        "openapi": "3.1.0",
        "info": info,
        "paths": paths,
        "x-tollgate": {
            "lifecycle": api.lifecycle,
            "sunset": api.sunset,
            "successor": api.successor,
            "tags": api.tags,
        },
    });
    if !schemes.is_empty() {
        document["components"] = json!({ "securitySchemes": schemes });
    }
    if !api.tags.is_empty() {
        document["tags"] = Value::Array(api.tags.iter().map(|t| json!({ "name": t })).collect());
    }
    document
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(yaml: &str) -> Api {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn routes_schemas_and_credentials_are_described() {
        let doc = describe(&api(
            "name: pets\nservice: s\nversion: '2'\ntags: [animals]\nmatch: { paths: ['=/pets', '/pets/{id}'], methods: [GET, POST, HEAD] }\npolicies:\n  auth: { methods: [key, jwt] }\n  validate: { json_schema: { type: object, required: [name] } }\n",
        ));
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"], json!({ "title": "pets", "version": "2" }));
        let exact = &doc["paths"]["/pets"];
        assert_eq!(
            exact.as_object().unwrap().len(),
            2,
            "GET and POST, not HEAD: {doc}"
        );
        assert!(exact["get"].get("requestBody").is_none());
        assert_eq!(
            exact["post"]["requestBody"]["content"]["application/json"]["schema"]["required"],
            json!(["name"])
        );
        assert_eq!(
            exact["post"]["security"],
            json!([{ "apiKey": [] }, { "bearer": [] }])
        );
        assert!(exact["get"].get("description").is_none(), "exact");
        assert!(doc["paths"]["/pets/{id}"]["get"]["description"]
            .as_str()
            .unwrap()
            .contains("under"));
        assert_eq!(
            doc["components"]["securitySchemes"]["apiKey"],
            json!({ "type": "apiKey", "in": "header", "name": "x-api-key" })
        );
        assert_eq!(doc["tags"], json!([{ "name": "animals" }]));
    }

    #[test]
    fn any_method_and_deprecation_are_said() {
        let doc = describe(&api(
            "name: old\nservice: s\nmatch: { paths: [/old] }\nlifecycle: deprecated\nsuccessor: new\nsunset: 2099-01-01T00:00:00Z\n",
        ));
        assert_eq!(doc["paths"]["/old"].as_object().unwrap().len(), 5);
        let description = doc["info"]["description"].as_str().unwrap();
        assert!(
            description.contains("2099") && description.contains("`new`"),
            "{description}"
        );
        assert!(doc.get("components").is_none());
    }
}
