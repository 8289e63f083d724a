//! `tollgate_config::openapi::import` on the Swagger Petstore (OpenAPI 3.0)
//! and on small 3.0/3.1 documents: the APIs it produces, that they load as a
//! configuration, and that their schemas compile with the `jsonschema` crate
//! the gateway uses and accept and refuse the bodies they should.

use serde_json::{json, Value};
use tollgate_config::openapi::{import, ImportOptions};
use tollgate_config::{Api, ConfigError, PathPattern};

const PETSTORE: &str = include_str!("fixtures/petstore3.json");

fn options(service: &str) -> ImportOptions<'_> {
    ImportOptions {
        service,
        team: None,
    }
}

fn petstore() -> Vec<Api> {
    import(PETSTORE, &options("petstore")).unwrap_or_else(|e| panic!("{e:#?}"))
}

fn api<'a>(apis: &'a [Api], name: &str) -> &'a Api {
    apis.iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("no API `{name}` in {:?}", names(apis)))
}

fn names(apis: &[Api]) -> Vec<&str> {
    apis.iter().map(|a| a.name.as_str()).collect()
}

fn schema(api: &Api) -> &Value {
    api.policies
        .validate
        .as_ref()
        .and_then(|v| v.json_schema.as_ref())
        .unwrap_or_else(|| panic!("`{}` has no schema", api.name))
}

/// Compiled exactly as tollgate-policy's `BodyValidator::compile` does.
fn compile(api: &Api) -> jsonschema::Validator {
    jsonschema::options()
        .build(schema(api))
        .unwrap_or_else(|e| panic!("`{}`: {e}\n{:#}", api.name, schema(api)))
}

fn import_err(spec: &str) -> Vec<ConfigError> {
    match import(spec, &options("svc")) {
        Ok(apis) => panic!("imported {:?}", names(&apis)),
        Err(errors) => errors,
    }
}

/// The configuration a user gets from the import: the service plus its APIs.
fn config_yaml(apis: &[Api]) -> String {
    serde_yaml::to_string(&json!({
        "services": [{ "name": "petstore", "upstream": { "targets": [{ "url": "http://127.0.0.1:8080" }] } }],
        "apis": apis,
    }))
    .unwrap()
}

#[test]
fn petstore_gives_one_api_per_operation() {
    let apis = petstore();
    let got: Vec<(&str, &str, &str, bool)> = apis
        .iter()
        .map(|a| {
            assert_eq!(a.service, "petstore");
            assert_eq!(a.matcher.paths.len(), 1, "{}", a.name);
            // A GET also answers HEAD; every other operation is one method.
            let expected_methods = if a.matcher.methods[0] == "GET" {
                vec!["GET", "HEAD"]
            } else {
                vec![a.matcher.methods[0].as_str()]
            };
            assert_eq!(a.matcher.methods, expected_methods, "{}", a.name);
            assert!(a.matcher.hosts.is_empty() && a.strip_prefix.is_none());
            (
                a.name.as_str(),
                a.matcher.paths[0].as_str(),
                a.matcher.methods[0].as_str(),
                a.policies.validate.is_some(),
            )
        })
        .collect();
    let expected = [
        ("petstore-updatePet", "=/api/v3/pet", "PUT", true),
        ("petstore-addPet", "=/api/v3/pet", "POST", true),
        (
            "petstore-findPetsByStatus",
            "=/api/v3/pet/findByStatus",
            "GET",
            false,
        ),
        (
            "petstore-findPetsByTags",
            "=/api/v3/pet/findByTags",
            "GET",
            false,
        ),
        ("petstore-getPetById", "/api/v3/pet/{petId}", "GET", false),
        (
            "petstore-updatePetWithForm",
            "/api/v3/pet/{petId}",
            "POST",
            false,
        ),
        ("petstore-deletePet", "/api/v3/pet/{petId}", "DELETE", false),
        // application/octet-stream: not validated.
        (
            "petstore-uploadFile",
            "/api/v3/pet/{petId}/uploadImage",
            "POST",
            false,
        ),
        (
            "petstore-getInventory",
            "=/api/v3/store/inventory",
            "GET",
            false,
        ),
        ("petstore-placeOrder", "=/api/v3/store/order", "POST", true),
        (
            "petstore-getOrderById",
            "/api/v3/store/order/{orderId}",
            "GET",
            false,
        ),
        (
            "petstore-deleteOrder",
            "/api/v3/store/order/{orderId}",
            "DELETE",
            false,
        ),
        ("petstore-createUser", "=/api/v3/user", "POST", true),
        (
            "petstore-createUsersWithListInput",
            "=/api/v3/user/createWithList",
            "POST",
            true,
        ),
        ("petstore-loginUser", "=/api/v3/user/login", "GET", false),
        ("petstore-logoutUser", "=/api/v3/user/logout", "GET", false),
        (
            "petstore-getUserByName",
            "/api/v3/user/{username}",
            "GET",
            false,
        ),
        (
            "petstore-updateUser",
            "/api/v3/user/{username}",
            "PUT",
            true,
        ),
        (
            "petstore-deleteUser",
            "/api/v3/user/{username}",
            "DELETE",
            false,
        ),
    ];
    assert_eq!(got, expected);
}

#[test]
fn petstore_paths_match_what_openapi_means() {
    let apis = petstore();
    let pattern = |name: &str| PathPattern::parse(&api(&apis, name).matcher.paths[0]).unwrap();
    let by_id = pattern("petstore-getPetById");
    assert!(by_id.matches("/api/v3/pet/123"));
    assert!(!by_id.matches("/api/v3/pet"));
    assert!(
        !by_id.matches("/pet/123"),
        "the server prefix is part of the path"
    );
    // A literal OpenAPI path is an exact route, which the router ranks above
    // every prefix route: `/pet/findByStatus` is never `getPetById`.
    let by_status = pattern("petstore-findPetsByStatus");
    assert!(matches!(by_status, PathPattern::Exact(_)));
    assert!(by_status.matches("/api/v3/pet/findByStatus"));
    assert!(!by_status.matches("/api/v3/pet/findByStatus/x"));
    let add = pattern("petstore-addPet");
    assert!(add.matches("/api/v3/pet") && !add.matches("/api/v3/pet/123"));
    // `/pet/{petId}/uploadImage` has more segments than `/pet/{petId}`: it wins
    // for its own path.
    let upload = pattern("petstore-uploadFile");
    assert!(upload.matches("/api/v3/pet/7/uploadImage"));
    assert!(!upload.matches("/api/v3/pet/7"));
}

#[test]
fn petstore_apis_load_as_a_configuration() {
    let apis = petstore();
    let config = tollgate_config::from_yaml(&config_yaml(&apis)).unwrap_or_else(|e| {
        panic!("{e:#?}");
    });
    assert_eq!(config.apis, apis);
}

#[test]
fn every_petstore_schema_compiles() {
    let apis = petstore();
    let validated: Vec<&Api> = apis
        .iter()
        .filter(|a| a.policies.validate.is_some())
        .collect();
    assert_eq!(validated.len(), 6);
    for api in validated {
        compile(api);
        let validate = api.policies.validate.as_ref().unwrap();
        assert_eq!(validate.max_depth, 32, "defaults apply");
    }
}

#[test]
fn pet_body_schema_accepts_a_pet_and_refuses_one_without_name_or_photo_urls() {
    let apis = petstore();
    for name in ["petstore-addPet", "petstore-updatePet"] {
        let validator = compile(api(&apis, name));
        let good = json!({
            "id": 10, "name": "doggie",
            "category": { "id": 1, "name": "Dogs" },
            "photoUrls": ["https://example.com/doggie.png"],
            "tags": [{ "id": 0, "name": "good" }],
            "status": "available"
        });
        assert!(validator.is_valid(&good), "{name}");
        assert!(validator.is_valid(&json!({ "name": "doggie", "photoUrls": [] })));

        let mut no_name = good.clone();
        no_name.as_object_mut().unwrap().remove("name");
        assert!(!validator.is_valid(&no_name), "{name}: missing name");
        let mut no_photos = good.clone();
        no_photos.as_object_mut().unwrap().remove("photoUrls");
        assert!(!validator.is_valid(&no_photos), "{name}: missing photoUrls");
        // Through the `$defs` copies of Category and Tag, and the enum.
        let mut bad_category = good.clone();
        bad_category["category"]["id"] = json!("one");
        assert!(!validator.is_valid(&bad_category));
        let mut bad_tag = good.clone();
        bad_tag["tags"][0]["name"] = json!(7);
        assert!(!validator.is_valid(&bad_tag));
        let mut bad_status = good;
        bad_status["status"] = json!("lost");
        assert!(!validator.is_valid(&bad_status));
        assert!(!validator.is_valid(&json!([])));
    }
}

#[test]
fn pet_schema_is_the_component_under_defs() {
    let apis = petstore();
    let schema = schema(api(&apis, "petstore-addPet"));
    assert_eq!(schema["$ref"], "#/$defs/Pet");
    let defs = schema["$defs"].as_object().unwrap();
    let mut def_names: Vec<&str> = defs.keys().map(String::as_str).collect();
    def_names.sort();
    assert_eq!(def_names, ["Category", "Pet", "Tag"]);
    let pet = &defs["Pet"];
    assert_eq!(
        pet["properties"]["category"],
        json!({ "$ref": "#/$defs/Category" })
    );
    // OpenAPI-only keywords and extensions are gone; annotations stay.
    for dropped in ["xml", "x-swagger-router-model", "example"] {
        assert!(pet.get(dropped).is_none(), "{dropped}");
    }
    assert!(pet["properties"]["id"].get("example").is_none());
    assert_eq!(pet["properties"]["id"]["format"], "int64");
}

#[test]
fn other_petstore_bodies_validate() {
    let apis = petstore();
    let users = compile(api(&apis, "petstore-createUsersWithListInput"));
    assert!(users.is_valid(&json!([{ "id": 10, "username": "theUser", "userStatus": 1 }])));
    assert!(users.is_valid(&json!([])));
    assert!(!users.is_valid(&json!([{ "id": "ten" }])));
    assert!(!users.is_valid(&json!({ "id": 10 })));

    let order = compile(api(&apis, "petstore-placeOrder"));
    assert!(order.is_valid(
        &json!({ "id": 10, "petId": 198772, "quantity": 7, "status": "approved", "complete": true })
    ));
    assert!(!order.is_valid(&json!({ "status": "shipped" })));
    assert!(!order.is_valid(&json!({ "complete": "yes" })));
}

#[test]
fn import_is_deterministic() {
    assert_eq!(petstore(), petstore());
}

#[test]
fn yaml_spec_with_openapi_30_conversions() {
    let spec = r#"
openapi: 3.0.3
info: { title: Things, version: "1" }
servers:
  - url: "{scheme}://things.example.com/{base}"
    variables:
      scheme: { default: https }
      base: { default: v2 }
paths:
  /things:
    post:
      operationId: create thing
      requestBody:
        $ref: '#/components/requestBodies/Thing'
    get: {}
  /things/{id}:
    servers: [{ url: /legacy }]
    put:
      requestBody:
        required: true
        content:
          application/merge-patch+json:
            schema: { $ref: '#/components/schemas/Thing' }
    delete:
      operationId: removeThing
components:
  requestBodies:
    Thing:
      content:
        application/json; charset=utf-8:
          schema: { $ref: '#/components/schemas/Thing' }
  schemas:
    Thing:
      type: object
      required: [id, name, weight]
      properties:
        id: { type: integer, readOnly: true }
        name: { type: string, nullable: true, example: box }
        weight: { type: number, minimum: 0, maximum: 100, exclusiveMaximum: true }
        owner:
          $ref: '#/components/schemas/Owner'
          description: ignored beside $ref in 3.0
        kind:
          type: string
          enum: [a, b]
          nullable: true
      discriminator: { propertyName: kind }
    Owner:
      type: object
      properties: { name: { type: string } }
      additionalProperties: false
"#;
    let apis = import(spec, &options("things")).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(
        names(&apis),
        [
            "things-create-thing",
            "things-get-things",
            "things-put-things-id",
            "things-removeThing"
        ]
    );
    assert_eq!(apis[0].matcher.paths, ["=/v2/things"]);
    assert_eq!(
        apis[2].matcher.paths,
        ["/legacy/things/{id}"],
        "path-level servers win"
    );
    assert!(apis[1].policies.validate.is_none());
    assert!(
        apis[3].policies.validate.is_none(),
        "DELETE does not inherit PUT's schema"
    );

    for api in [&apis[0], &apis[2]] {
        let validator = compile(api);
        // `id` is readOnly: required in responses only.
        assert!(validator.is_valid(&json!({ "name": "box", "weight": 10 })));
        assert!(
            validator.is_valid(&json!({ "name": null, "weight": 10 })),
            "nullable"
        );
        assert!(!validator.is_valid(&json!({ "name": 1, "weight": 10 })));
        assert!(
            !validator.is_valid(&json!({ "weight": 10 })),
            "name is required"
        );
        assert!(validator.is_valid(&json!({ "name": "b", "weight": 99.5 })));
        assert!(
            !validator.is_valid(&json!({ "name": "b", "weight": 100 })),
            "exclusiveMaximum"
        );
        // Beside a $ref, `description` is ignored; the ref still applies.
        assert!(!validator.is_valid(&json!({ "name": "b", "weight": 1, "owner": { "x": 1 } })));
        // nullable without null in the enum: null is not allowed (OpenAPI 3.0.3).
        assert!(!validator.is_valid(&json!({ "name": "b", "weight": 1, "kind": null })));
        assert!(validator.is_valid(&json!({ "name": "b", "weight": 1, "kind": "a" })));
    }
    let thing = &schema(&apis[0])["$defs"]["Thing"];
    assert_eq!(thing["required"], json!(["name", "weight"]));
    assert_eq!(
        thing["properties"]["name"]["type"],
        json!(["string", "null"])
    );
    assert!(thing.get("discriminator").is_none());
    assert_eq!(
        thing["properties"]["weight"]["exclusiveMaximum"],
        json!(100)
    );
    assert!(thing["properties"]["weight"].get("maximum").is_none());
}

#[test]
fn openapi_31_spec() {
    // Raw JSON text: the document's order is kept, `/trees` first.
    let spec = r##"{
        "openapi": "3.1.0",
        "info": { "title": "Tree", "version": "1" },
        "paths": {
            "/trees": {
                "post": {
                    "operationId": "plant",
                    "requestBody": { "content": { "application/json": { "schema": {
                        "$ref": "#/components/schemas/Node",
                        "required": ["label"],
                        "examples": [{ "label": "root" }]
                    } } } }
                }
            },
            "/": { "get": {} }
        },
        "components": { "schemas": { "Node": {
            "type": "object",
            "properties": {
                "label": { "type": ["string", "null"] },
                "children": { "type": "array", "items": { "$ref": "#/components/schemas/Node" } }
            },
            "additionalProperties": false
        } } },
        "webhooks": {}
    }"##;
    let apis = import(spec, &options("trees")).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(names(&apis), ["trees-plant", "trees-get"]);
    assert_eq!(apis[1].matcher.paths, ["=/"]);
    let validator = compile(&apis[0]);
    // A recursive schema: `Node` refers to itself through `#/$defs/Node`.
    assert!(validator.is_valid(
        &json!({ "label": "a", "children": [{ "label": null, "children": [{ "label": "c" }] }] })
    ));
    assert!(!validator
        .is_valid(&json!({ "label": "a", "children": [{ "children": [{ "label": 3 }] }] })));
    assert!(!validator.is_valid(&json!({ "label": "a", "children": [{ "colour": "red" }] })));
    // In 3.1 keywords beside `$ref` apply.
    assert!(!validator.is_valid(&json!({ "children": [] })));
}

#[test]
fn openapi_31_without_paths_imports_nothing() {
    let apis = import(
        "openapi: 3.1.0\ninfo: {title: x, version: '1'}\nwebhooks: {}\n",
        &options("s"),
    )
    .unwrap();
    assert!(apis.is_empty());
}

#[test]
fn swagger_2_is_refused() {
    let errors =
        import_err(r#"{"swagger": "2.0", "info": {"title": "x", "version": "1"}, "paths": {}}"#);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "openapi");
    assert!(errors[0].message.contains("Swagger 2.0"), "{}", errors[0]);
    assert!(errors[0].message.contains("OpenAPI 3"), "{}", errors[0]);
}

#[test]
fn missing_or_other_versions_are_refused() {
    for (spec, says) in [
        ("info: {title: x, version: '1'}\npaths: {}\n", "missing"),
        ("openapi: 3.2.0\npaths: {}\n", "`3.2.0`"),
        ("openapi: 4.0\npaths: {}\n", "`4.0`"),
        ("openapi: [3]\npaths: {}\n", "version string"),
    ] {
        let errors = import_err(spec);
        assert_eq!(errors[0].path, "openapi", "{spec}");
        assert!(errors[0].message.contains(says), "{spec}: {}", errors[0]);
    }
    // An unquoted `openapi: 3.0` is read as a number, and accepted.
    assert!(import("openapi: 3.0\npaths: {}\n", &options("s"))
        .unwrap()
        .is_empty());
}

#[test]
fn text_that_is_not_a_document_is_refused() {
    assert_eq!(import_err("{ not json")[0].path, "");
    assert_eq!(import_err("- a\n- b\n")[0].path, "");
    let errors = import_err("openapi: 3.0.3\n");
    assert_eq!(errors[0].path, "paths");
}

#[test]
fn unresolvable_ref_is_an_error_with_its_path() {
    let spec = r#"
openapi: 3.0.3
paths:
  /pet:
    post:
      requestBody:
        content:
          application/json:
            schema: { $ref: '#/components/schemas/Missing' }
    put:
      requestBody: { $ref: '#/components/requestBodies/Nope' }
  /cat:
    post:
      requestBody:
        content:
          application/json:
            schema: { $ref: '#/components/schemas/Cat' }
    patch:
      requestBody:
        content:
          application/json:
            schema: { $ref: 'https://example.com/cat.json' }
components:
  schemas:
    Cat:
      type: object
      properties:
        owner: { $ref: '#/components/schemas/Owner' }
"#;
    let errors = import_err(spec);
    let rendered: Vec<String> = errors.iter().map(ToString::to_string).collect();
    for expected in [
        "paths./pet.post.requestBody.content.application/json.schema.$ref: `#/components/schemas/Missing` does not resolve in this document",
        "paths./pet.put.requestBody.$ref: `#/components/requestBodies/Nope` does not resolve in this document",
        "components.schemas.Cat.properties.owner.$ref: `#/components/schemas/Owner` does not resolve in this document",
    ] {
        assert!(rendered.iter().any(|e| e == expected), "missing `{expected}` in {rendered:#?}");
    }
    assert!(
        rendered.iter().any(|e| e.starts_with("paths./cat.patch.requestBody.content.application/json.schema.$ref: `https://example.com/cat.json`: only references inside this document")),
        "{rendered:#?}"
    );
    assert_eq!(rendered.len(), 4, "{rendered:#?}");
}

#[test]
fn ref_cycles_without_schemas_are_errors_not_hangs() {
    let spec = r#"
openapi: 3.0.3
paths:
  /a:
    post:
      requestBody: { $ref: '#/components/requestBodies/A' }
components:
  requestBodies:
    A: { $ref: '#/components/requestBodies/B' }
    B: { $ref: '#/components/requestBodies/A' }
  schemas:
    Loop: { $ref: '#/components/schemas/Loop' }
"#;
    let errors = import_err(spec);
    assert!(errors[0].message.contains("a cycle"), "{errors:#?}");

    // A schema that is only a reference to itself would make the validator
    // loop.
    let spec = r#"
openapi: 3.0.3
paths:
  /a:
    post:
      requestBody:
        content: { application/json: { schema: { $ref: '#/components/schemas/Loop' } } }
components:
  schemas:
    Loop: { $ref: '#/components/schemas/Loop' }
"#;
    let errors = import_err(spec);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].path, "components.schemas.Loop");
    assert!(errors[0].message.contains("a cycle"), "{}", errors[0]);
}

#[test]
fn names_are_valid_unique_and_stable() {
    let spec = r#"
openapi: 3.0.3
paths:
  /pets:
    get: { operationId: list/pets }
    post: { operationId: list pets }
  /pets/{pet-id}/photos/{photo_id}:
    get: {}
    delete: { operationId: "" }
  /x:
    get: { operationId: "éé" }
"#;
    let apis = import(spec, &options("zoo.v1")).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(
        names(&apis),
        [
            "zoo.v1-list-pets",
            "zoo.v1-list-pets-2",
            "zoo.v1-get-pets-pet-id-photos-photo_id",
            "zoo.v1-delete-pets-pet-id-photos-photo_id",
            "zoo.v1-get-x",
        ]
    );
    assert_eq!(apis[2].matcher.paths, ["/pets/{pet_id}/photos/{photo_id}"]);
    // Names are cut to 100 characters, and still unique.
    let long = "s".repeat(95);
    let apis = import(
        "openapi: 3.0.3\npaths:\n  /a: {get: {operationId: abcdefgh}, post: {operationId: abcdefghi}}\n",
        &options(&long),
    )
    .unwrap();
    assert!(
        apis.iter().all(|a| a.name.len() <= 100),
        "{:?}",
        names(&apis)
    );
    assert_ne!(apis[0].name, apis[1].name);
    let yaml = serde_yaml::to_string(&json!({
        "services": [{ "name": long, "upstream": { "targets": [{ "url": "http://127.0.0.1:1" }] } }],
        "apis": apis,
    }))
    .unwrap();
    tollgate_config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e:#?}"));
}

#[test]
fn an_invalid_service_name_is_refused() {
    let errors = import_err_with("openapi: 3.0.3\npaths: {}\n", "my service");
    assert_eq!(errors[0].path, "service");
    // Reported along with a bad document.
    let errors = import_err_with("swagger: '2.0'\n", "");
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["service", "openapi"]);
}

fn import_err_with(spec: &str, service: &str) -> Vec<ConfigError> {
    import(spec, &options(service)).unwrap_err()
}

#[test]
fn paths_tollgate_cannot_match_are_errors() {
    let errors =
        import_err("openapi: 3.0.3\npaths:\n  /caf\u{e9}:\n    get: {}\n  /a//b:\n    get: {}\n");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(errors[0].path, "paths./caf\u{e9}");
    assert!(
        errors[0].message.contains("percent-encoded"),
        "{}",
        errors[0]
    );
    assert_eq!(errors[1].path, "paths./a//b");
}

#[test]
fn routes_tollgate_cannot_tell_apart_are_errors() {
    let spec = r#"
openapi: 3.0.3
paths:
  /files/{name}.json:
    get: {}
  /files/{name}.xml:
    get: {}
    put: {}
"#;
    let errors = import_err(spec);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].path, "paths./files/{name}.xml.get");
    assert!(
        errors[0].message.contains("/files/{name}.json"),
        "{}",
        errors[0]
    );
}

#[test]
fn several_json_media_types_are_any_of_them() {
    let spec = r#"
openapi: 3.0.3
paths:
  /doc:
    patch:
      requestBody:
        content:
          application/json: { schema: { type: object, required: [a] } }
          application/merge-patch+json: { schema: { type: object, required: [b] } }
          application/xml: { schema: { type: object, required: [c] } }
    put:
      requestBody:
        content:
          application/json: { schema: { type: object, required: [a] } }
          application/vnd.doc+json: {}
    post:
      requestBody:
        content:
          text/plain: { schema: { type: string } }
"#;
    let apis = import(spec, &options("docs")).unwrap_or_else(|e| panic!("{e:#?}"));
    let validator = compile(&apis[0]);
    assert!(validator.is_valid(&json!({ "a": 1 })));
    assert!(validator.is_valid(&json!({ "b": 1 })));
    assert!(!validator.is_valid(&json!({ "c": 1 })));
    // A JSON media type without a schema takes any JSON: nothing to validate.
    assert!(apis[1].policies.validate.is_none());
    assert!(apis[2].policies.validate.is_none());
}

#[test]
fn yaml_merge_keys_and_local_path_item_refs() {
    let spec = r#"
openapi: 3.1.0
paths:
  /a: { $ref: '#/components/pathItems/Shared' }
components:
  pathItems:
    Shared:
      post:
        requestBody:
          content:
            application/json:
              schema:
                <<: { type: object, required: [x] }
                properties: { x: { type: integer } }
"#;
    let apis = import(spec, &options("s")).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(apis[0].matcher.paths, ["=/a"]);
    let validator = compile(&apis[0]);
    assert!(validator.is_valid(&json!({ "x": 1 })));
    assert!(!validator.is_valid(&json!({})));
}

#[test]
fn what_openapi_tools_ignore_does_not_break_the_schema() {
    let spec = r#"
openapi: 3.0.1
paths:
  /notes:
    post:
      requestBody:
        content:
          application/json:
            schema:
              type: object
              examples: { first: { text: hi } }
              properties:
                text: { type: string, required: true, x-order: 1 }
                xml: { type: string }
                example: { type: integer }
              required: [xml]
"#;
    let apis = import(spec, &options("notes")).unwrap_or_else(|e| panic!("{e:#?}"));
    let validator = compile(&apis[0]);
    // Properties named like dropped keywords are properties, kept.
    assert!(validator.is_valid(&json!({ "xml": "a", "example": 1 })));
    assert!(!validator.is_valid(&json!({ "xml": "a", "example": "one" })));
    assert!(!validator.is_valid(&json!({ "text": "a" })));
    assert!(
        validator.is_valid(&json!({ "xml": "a" })),
        "`required: true` on a property is no constraint"
    );
}

#[test]
fn operations_keep_their_tags_for_the_portal() {
    let apis = petstore();
    let add_pet = api(&apis, "petstore-addPet");
    assert_eq!(add_pet.tags, ["pet"]);
    let place_order = api(&apis, "petstore-placeOrder");
    assert_eq!(place_order.tags, ["store"]);
}
