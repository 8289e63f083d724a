//! Importing an OpenAPI 3 document: its operations become [`Api`]s of one
//! service, and its JSON request-body schemas become `validate` policies.
//!
//! This module is a pure conversion from the document's text to `Api`
//! values; the CLI (`tollgate import-openapi`) and the admin API write them.
//! It never fetches anything: a `$ref` outside the document is an error.
//!
//! # The mapping
//!
//! * **Versions**: OpenAPI 3.0.x and 3.1.x, as JSON or YAML. Swagger 2.0, a
//!   missing `openapi` field or any other version is refused (path `openapi`).
//! * **One `Api` per operation** (path + method), not per path item: the
//!   gateway's `validate` policy reads the body of every request that carries
//!   one (and of every POST, PUT and PATCH), so an API that served both a
//!   `PUT` with a schema and a `DELETE` without one would check the `DELETE`'s
//!   body against the `PUT`'s schema. One API per operation also gives every
//!   operation its own name, analytics and, later, its own policies. The
//!   router merges the methods of routes with the same path for its `405`
//!   answers, so `Allow` still lists every method of the path.
//! * **Names**: `<service>-<operationId>`, the operationId kept as written
//!   (`petstore-addPet`) but with any character a Tollgate name does not allow
//!   (letters, digits, `-`, `_`, `.`) replaced by `-`. Without an
//!   operationId: `<service>-<method>-<path>` in the same alphabet
//!   (`petstore-get-pet-petId`). Names are cut to 100 characters; a name
//!   already taken gets `-2`, `-3`, … in document order. The same document
//!   always gives the same names.
//! * **Paths**: a path without parameters becomes an exact pattern
//!   (`/pet/findByStatus` → `=/api/v3/pet/findByStatus`). A templated path
//!   becomes a prefix pattern with `{param}` segments (`/pet/{petId}` →
//!   `/api/v3/pet/{petId}`): Tollgate's exact patterns take no parameters, so
//!   this is the closest form. It matches `/pet/123` and not `/pet`, but it
//!   also matches `/pet/123/extra` when no more specific route does. The
//!   router's precedence gives OpenAPI's: an exact path beats any prefix, and
//!   among prefixes the longer one, then the one with a literal where the
//!   other has a parameter, wins — so `/pet/findByStatus` goes to
//!   `findPetsByStatus` and `/pet/1/uploadImage` to `uploadFile`. (A method a
//!   literal path does not define falls through to a matching template: a
//!   `POST /pet/findByStatus` is routed to `POST /pet/{petId}`, as it would be
//!   without the literal path.) A segment mixing text and parameters
//!   (`/{name}.json`) becomes a whole `{param}` segment, which matches more
//!   than the template; two operations whose paths become the same route with
//!   the same method are an error, since the router could not tell them apart.
//! * **Prefix**: the path of the first server URL (`servers[0].url`, absolute
//!   or relative, server variables replaced by their defaults) is put before
//!   every path: `/api/v3` + `/pet` → `/api/v3/pet`. Servers declared on a path
//!   item or an operation override the document's, as in OpenAPI. No
//!   `strip_prefix` is set: the upstream receives the path the client sent,
//!   prefix included, so the service's target URL should have no path.
//! * **Methods**: the operation's method, upper-cased; a `GET` also matches
//!   `HEAD` (as HTTP has it), unless the path item describes `head` itself.
//! * **Request bodies**: the schema of `application/json`, or of a `+json`
//!   media type (`application/merge-patch+json`), becomes
//!   `policies.validate.json_schema`; several different JSON schemas on one
//!   operation are joined with `anyOf`. An operation without a JSON schema, or
//!   whose schema accepts anything, gets no `validate` policy. Because
//!   `validate` refuses a body that is not JSON, an operation that also accepts
//!   XML or a form (Petstore's `POST /pet`) accepts only JSON through the
//!   gateway; and an optional body (`required: false`) is still required on
//!   POST, PUT and PATCH, which `validate` always reads.
//!
//! # Schemas
//!
//! Each produced schema is self-contained, draft 2020-12, the dialect the
//! gateway compiles by default. Every local `$ref` (`#/components/schemas/Pet`,
//! or any `#/…` pointer into the document) is copied under the schema's
//! `$defs` (`#/$defs/Pet`) and the reference rewritten to point there; this is
//! done for every reference, not only recursive ones, so a recursive schema
//! needs nothing special. OpenAPI 3.0 schemas are converted:
//!
//! * `nullable: true` adds `"null"` to `type` (only when `type` is given, as
//!   OpenAPI 3.0.3 specifies), and is then dropped;
//! * boolean `exclusiveMaximum`/`exclusiveMinimum` become the numeric form;
//! * keywords beside a `$ref` are ignored, as OpenAPI 3.0 says (3.1 keeps them);
//! * a property both `required` and `readOnly` is not required in a request,
//!   as OpenAPI says of readOnly properties (in 3.0 and 3.1);
//! * `discriminator`, `xml`, `externalDocs`, `example` and `x-` extensions are
//!   dropped (annotations the validator has no use for), as are `$schema` and
//!   `$id`, which would change how the rewritten references resolve.
//!   `readOnly`, `writeOnly`, `deprecated`, `format` and `description` are
//!   kept: they are JSON Schema annotations, and formats are not asserted;
//! * what OpenAPI tools ignore but the gateway's schema compiler would refuse
//!   is dropped too: a non-array `required` (`required: true` on a property,
//!   a Swagger 2 habit), and `examples` unless it is an array in 3.1.
//!
//! A chain of `$ref`s that leads back to itself without a schema in between
//! is an error; a recursive schema (a `Node` whose `children` are `Node`s) is
//! fine.
//!
//! Every problem is reported, each as a [`ConfigError`] with a path into the
//! document (`paths./pet.post.requestBody.$ref: …`); none panics.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::{json, Map, Value as Json};
use serde_yaml::{Mapping, Value as Yaml};

use crate::model::Api;
use crate::pattern::{PathPattern, Segment};
use crate::ConfigError;

/// What the caller decides about the imported APIs.
#[derive(Clone, Copy, Debug)]
pub struct ImportOptions<'a> {
    /// The service every API routes to; also the first part of every API's name.
    pub service: &'a str,
    /// The owning team. An API has no team of its own (its service has), so
    /// this is not recorded on the APIs.
    pub team: Option<&'a str>,
}

/// Converts an OpenAPI 3.0 or 3.1 document (JSON or YAML text) into one
/// [`Api`] per operation, in document order; see the module documentation
/// for the mapping. Returns every problem found, not the first.
pub fn import(spec_text: &str, options: &ImportOptions) -> Result<Vec<Api>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    if !is_valid_name(options.service) {
        errors.push(ConfigError::new(
            "service",
            format!(
                "`{}`: names are 1 to 100 letters, digits, '-', '_' or '.'",
                options.service
            ),
        ));
    }
    let (doc, dialect) = match parse(spec_text).and_then(|doc| Ok((dialect(&doc)?, doc))) {
        Ok((dialect, doc)) => (doc, dialect),
        Err(e) => {
            errors.push(e);
            return Err(errors);
        }
    };
    let mut importer = Importer {
        doc: &doc,
        dialect,
        service: options.service,
        apis: Vec::new(),
        names: HashSet::new(),
        routes: HashMap::new(),
        errors,
    };
    importer.run();
    let Importer {
        apis, mut errors, ..
    } = importer;
    if errors.is_empty() {
        Ok(apis)
    } else {
        // A component used by several operations reports its problem once.
        let mut seen = HashSet::new();
        errors.retain(|e| seen.insert((e.path.clone(), e.message.clone())));
        Err(errors)
    }
}

/// The keys of a path item that are operations.
const OPERATIONS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Longest Tollgate resource name.
const MAX_NAME: usize = 100;

/// How many `$ref`s in a row are followed before giving up on a cycle.
const MAX_REF_CHAIN: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    /// OpenAPI 3.0: an extended subset of JSON Schema draft 4/5.
    V30,
    /// OpenAPI 3.1: JSON Schema draft 2020-12.
    V31,
}

struct Importer<'d> {
    doc: &'d Yaml,
    dialect: Dialect,
    service: &'d str,
    apis: Vec<Api>,
    names: HashSet<String>,
    /// (route key, method) → the OpenAPI path that produced it.
    routes: HashMap<(String, String), String>,
    errors: Vec<ConfigError>,
}

impl<'d> Importer<'d> {
    fn run(&mut self) {
        let doc = self.doc;
        let root_prefix = match server_prefix(doc.get("servers"), "servers") {
            Ok(prefix) => prefix.unwrap_or_default(),
            Err(e) => {
                self.errors.push(e);
                String::new()
            }
        };
        let paths = match doc.get("paths") {
            Some(Yaml::Mapping(paths)) => paths,
            Some(Yaml::Null) | None if self.dialect == Dialect::V31 => return,
            Some(Yaml::Null) | None => {
                self.error(
                    "paths",
                    "missing: an OpenAPI 3.0 document must have `paths`",
                );
                return;
            }
            Some(_) => {
                self.error("paths", "must be an object of path items");
                return;
            }
        };
        for (key, item) in paths {
            let Some(path) = key.as_str() else {
                self.error("paths", format!("`{}`: a path must be a string", text(key)));
                continue;
            };
            if path.starts_with("x-") {
                continue;
            }
            self.path_item(path, item, &root_prefix);
        }
    }

    fn path_item(&mut self, path: &str, item: &'d Yaml, root_prefix: &str) {
        let at = format!("paths.{path}");
        if !path.starts_with('/') {
            self.error(&at, "a path must start with '/'");
            return;
        }
        let (item, item_at) = match follow_refs(self.doc, item, &at) {
            Ok(found) => found,
            Err(e) => return self.errors.push(e),
        };
        let Some(item) = item.as_mapping() else {
            self.error(&item_at, "a path item must be an object");
            return;
        };
        let item_prefix = match server_prefix(item.get("servers"), &format!("{item_at}.servers")) {
            Ok(prefix) => prefix.unwrap_or_else(|| root_prefix.to_string()),
            Err(e) => {
                self.errors.push(e);
                root_prefix.to_string()
            }
        };
        let declares_head = item.contains_key("head");
        for (key, operation) in item {
            let Some(method) = key.as_str().filter(|k| OPERATIONS.contains(k)) else {
                continue;
            };
            let op_at = format!("{item_at}.{method}");
            let Some(operation) = operation.as_mapping() else {
                self.error(&op_at, "an operation must be an object");
                continue;
            };
            let prefix = match server_prefix(operation.get("servers"), &format!("{op_at}.servers"))
            {
                Ok(prefix) => prefix.unwrap_or_else(|| item_prefix.clone()),
                Err(e) => {
                    self.errors.push(e);
                    item_prefix.clone()
                }
            };
            // HTTP (RFC 9110 §9.3.2) has a GET answer HEAD as well, unless
            // the document describes HEAD itself.
            let with_head = method == "get" && !declares_head;
            self.operation(path, method, with_head, operation, &prefix, &op_at);
        }
    }

    fn operation(
        &mut self,
        path: &str,
        method: &str,
        with_head: bool,
        operation: &'d Mapping,
        prefix: &str,
        op_at: &str,
    ) {
        let method_upper = method.to_ascii_uppercase();
        let pattern = match route_pattern(prefix, path) {
            Ok(pattern) => pattern,
            Err(message) => {
                self.error(format!("paths.{path}"), message);
                return;
            }
        };
        let route = (route_key(&pattern), method_upper.clone());
        if let Some(first) = self.routes.get(&route) {
            self.error(
                op_at,
                format!(
                    "becomes the same route as {method_upper} `{first}` (`{pattern}`): Tollgate \
                     patterns cannot tell the two apart"
                ),
            );
            return;
        }
        self.routes.insert(route, path.to_string());

        let schema = match operation.get("requestBody") {
            Some(body) => self.request_schema(body, &format!("{op_at}.requestBody")),
            None => None,
        };
        let operation_id = match operation.get("operationId") {
            None | Some(Yaml::Null) => None,
            Some(Yaml::String(id)) => Some(id.as_str()),
            Some(_) => {
                self.error(format!("{op_at}.operationId"), "must be a string");
                None
            }
        };
        let name = self.unique_name(operation_id, method, path);

        let methods: Vec<&str> = if with_head {
            vec![&method_upper, "HEAD"]
        } else {
            vec![&method_upper]
        };
        // Built through serde so every field this module does not set takes
        // its documented default, as it would in a YAML file.
        let mut api = json!({
            "name": name,
            "service": self.service,
            "match": { "paths": [pattern], "methods": methods },
        });
        if let Some(schema) = schema {
            api["policies"] = json!({ "validate": { "json_schema": schema } });
        }
        if let Some(Yaml::Sequence(tags)) = operation.get("tags") {
            let tags: Vec<&str> = tags.iter().filter_map(Yaml::as_str).collect();
            if !tags.is_empty() {
                api["tags"] = json!(tags);
            }
        }
        match serde_json::from_value::<Api>(api) {
            Ok(api) => self.apis.push(api),
            Err(e) => self.error(op_at, format!("cannot build the API: {e}")),
        }
    }

    /// The JSON Schema for the operation's request body, if it has one that
    /// constrains anything.
    fn request_schema(&mut self, body: &'d Yaml, at: &str) -> Option<Json> {
        let (body, body_at) = match follow_refs(self.doc, body, at) {
            Ok(found) => found,
            Err(e) => {
                self.errors.push(e);
                return None;
            }
        };
        let Some(body) = body.as_mapping() else {
            self.error(&body_at, "a request body must be an object");
            return None;
        };
        let content = match body.get("content") {
            Some(Yaml::Mapping(content)) => content,
            None => {
                self.error(
                    format!("{body_at}.content"),
                    "missing: a request body needs `content`",
                );
                return None;
            }
            Some(_) => {
                self.error(
                    format!("{body_at}.content"),
                    "must be an object of media types",
                );
                return None;
            }
        };
        let mut builder = SchemaBuilder::new(self.doc, self.dialect);
        let mut alternatives: Vec<Json> = Vec::new();
        for (media, media_object) in content {
            let Some(media) = media.as_str().filter(|m| is_json_media_type(m)) else {
                continue;
            };
            let media_at = format!("{body_at}.content.{media}");
            let schema = match media_object {
                Yaml::Mapping(m) => m.get("schema"),
                Yaml::Null => None,
                _ => {
                    self.error(&media_at, "a media type must be an object");
                    continue;
                }
            };
            // A JSON media type without a schema takes any JSON.
            let translated = match schema {
                Some(schema) => builder.root(schema, &format!("{media_at}.schema")),
                None => Json::Bool(true),
            };
            if !alternatives.contains(&translated) {
                alternatives.push(translated);
            }
        }
        if alternatives.is_empty() {
            return None;
        }
        let anything = alternatives.iter().any(accepts_anything);
        let root = match alternatives.len() {
            1 => alternatives.pop().unwrap_or(Json::Bool(true)),
            _ => json!({ "anyOf": alternatives }),
        };
        // Finished even when unused, to report the problems of what it references.
        let (schema, errors) = builder.finish(root);
        let failed = !errors.is_empty();
        self.errors.extend(errors);
        (!failed && !anything).then_some(schema)
    }

    fn unique_name(&mut self, operation_id: Option<&str>, method: &str, path: &str) -> String {
        let slug = operation_id
            .map(slug)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| slug(&format!("{method}-{path}")));
        let base = cut(&format!("{}-{slug}", self.service), MAX_NAME);
        let mut name = base.clone();
        let mut n = 2;
        while self.names.contains(&name) {
            let suffix = format!("-{n}");
            name = format!("{}{suffix}", cut(&base, MAX_NAME - suffix.len()));
            n += 1;
        }
        self.names.insert(name.clone());
        name
    }

    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }
}

/// Builds one self-contained JSON Schema: every referenced part of the
/// document copied under `$defs`, references rewritten to point there.
struct SchemaBuilder<'d> {
    doc: &'d Yaml,
    dialect: Dialect,
    /// Decoded JSON pointer → its name under `$defs`.
    def_names: HashMap<String, String>,
    used_names: HashSet<String>,
    /// Referenced schemas not translated yet: (name, schema, its path).
    pending: VecDeque<(String, &'d Yaml, String)>,
    defs: Map<String, Json>,
    errors: Vec<ConfigError>,
}

impl<'d> SchemaBuilder<'d> {
    fn new(doc: &'d Yaml, dialect: Dialect) -> Self {
        SchemaBuilder {
            doc,
            dialect,
            def_names: HashMap::new(),
            used_names: HashSet::new(),
            pending: VecDeque::new(),
            defs: Map::new(),
            errors: Vec::new(),
        }
    }

    /// Translates a media type's schema.
    fn root(&mut self, schema: &'d Yaml, at: &str) -> Json {
        // The schema's own `$defs` (3.1) stay; ours must not take their names.
        if let Some(Yaml::Mapping(own)) = schema.get("$defs") {
            self.used_names
                .extend(own.keys().filter_map(|k| k.as_str()).map(str::to_string));
        }
        self.translate(schema, at)
    }

    /// Translates what the references reached and puts it under `$defs`.
    fn finish(mut self, root: Json) -> (Json, Vec<ConfigError>) {
        while let Some((name, schema, at)) = self.pending.pop_front() {
            let translated = self.translate(schema, &at);
            self.defs.insert(name, translated);
        }
        if self.defs.is_empty() {
            return (root, self.errors);
        }
        let mut root = match root {
            Json::Object(map) => map,
            Json::Bool(true) => Map::new(),
            Json::Bool(false) => json!({ "not": {} })
                .as_object()
                .cloned()
                .unwrap_or_default(),
            _ => Map::new(),
        };
        match root.get_mut("$defs") {
            Some(Json::Object(own)) => own.extend(self.defs),
            _ => {
                root.insert("$defs".into(), Json::Object(self.defs));
            }
        }
        (Json::Object(root), self.errors)
    }

    fn translate(&mut self, schema: &'d Yaml, at: &str) -> Json {
        match untag(schema) {
            Yaml::Bool(b) => Json::Bool(*b),
            Yaml::Mapping(m) => self.translate_object(m, at),
            _ => {
                self.error(at, "a schema must be an object");
                Json::Bool(true)
            }
        }
    }

    fn translate_object(&mut self, m: &'d Mapping, at: &str) -> Json {
        let mut out = Map::new();
        if let Some(reference) = m.get("$ref") {
            let target = self.reference(reference, &format!("{at}.$ref"));
            out.insert("$ref".into(), target);
            if self.dialect == Dialect::V30 {
                // OpenAPI 3.0: "any sibling elements of a $ref are ignored".
                return Json::Object(out);
            }
        }
        let v30 = self.dialect == Dialect::V30;
        let nullable = v30 && matches!(m.get("nullable"), Some(Yaml::Bool(true)));
        for (key, value) in m {
            let Some(key) = key.as_str() else {
                self.error(
                    at,
                    format!("`{}`: a schema keyword must be a string", text(key)),
                );
                continue;
            };
            let here = format!("{at}.{key}");
            match key {
                "$ref" => {}
                "nullable" if v30 => {}
                "exclusiveMaximum" | "exclusiveMinimum" if v30 => {}
                "discriminator" | "xml" | "externalDocs" | "example" | "$schema" | "$id" => {}
                _ if key.starts_with("x-") => {}
                "properties" | "patternProperties" | "$defs" | "definitions"
                | "dependentSchemas" => {
                    let translated = self.schema_map(value, &here);
                    out.insert(key.into(), translated);
                }
                "allOf" | "anyOf" | "oneOf" | "prefixItems" => {
                    let translated = self.schema_list(value, &here);
                    out.insert(key.into(), translated);
                }
                "items" if value.is_sequence() => {
                    let translated = self.schema_list(value, &here);
                    out.insert(key.into(), translated);
                }
                "items"
                | "additionalProperties"
                | "additionalItems"
                | "not"
                | "contains"
                | "propertyNames"
                | "if"
                | "then"
                | "else"
                | "unevaluatedItems"
                | "unevaluatedProperties"
                | "contentSchema" => {
                    let translated = self.translate(value, &here);
                    out.insert(key.into(), translated);
                }
                // Not a 3.0 keyword, and 2020-12 wants an array.
                "examples" if v30 || !value.is_sequence() => {}
                "required" => {
                    let required = self.required(m, value, &here);
                    if let Some(required) = required {
                        out.insert(key.into(), required);
                    }
                }
                "type" if nullable => {
                    let mut types = match to_json(value, &here, &mut self.errors) {
                        Json::Array(types) => types,
                        single => vec![single],
                    };
                    if !types.contains(&json!("null")) {
                        types.push(json!("null"));
                    }
                    out.insert(key.into(), Json::Array(types));
                }
                _ => {
                    let data = to_json(value, &here, &mut self.errors);
                    out.insert(key.into(), data);
                }
            }
        }
        if v30 {
            // Draft 4's `exclusiveMaximum: true` qualifies `maximum`; 2020-12
            // wants the bound itself.
            for (exclusive, bound) in [
                ("exclusiveMaximum", "maximum"),
                ("exclusiveMinimum", "minimum"),
            ] {
                match m.get(exclusive) {
                    None | Some(Yaml::Bool(false)) => {}
                    Some(Yaml::Bool(true)) => {
                        if let Some(limit) = out.remove(bound) {
                            out.insert(exclusive.into(), limit);
                        }
                    }
                    Some(number) => {
                        let data = to_json(number, &format!("{at}.{exclusive}"), &mut self.errors);
                        out.insert(exclusive.into(), data);
                    }
                }
            }
        }
        Json::Object(out)
    }

    fn schema_map(&mut self, value: &'d Yaml, at: &str) -> Json {
        let Some(map) = value.as_mapping() else {
            self.error(at, "must be an object of schemas");
            return json!({});
        };
        let mut out = Map::new();
        for (key, schema) in map {
            let key = text(key);
            let translated = self.translate(schema, &format!("{at}.{key}"));
            out.insert(key, translated);
        }
        Json::Object(out)
    }

    fn schema_list(&mut self, value: &'d Yaml, at: &str) -> Json {
        let Some(list) = value.as_sequence() else {
            self.error(at, "must be an array of schemas");
            return json!([]);
        };
        let translated = list
            .iter()
            .enumerate()
            .map(|(i, schema)| self.translate(schema, &format!("{at}[{i}]")))
            .collect();
        Json::Array(translated)
    }

    /// `required`, without the properties that are `readOnly`: OpenAPI
    /// requires those in responses only.
    fn required(&mut self, schema: &'d Mapping, value: &'d Yaml, at: &str) -> Option<Json> {
        let Some(names) = value.as_sequence() else {
            // `required: true` on a property, a Swagger 2 habit: no constraint
            // in OpenAPI 3 either.
            return None;
        };
        let properties = schema.get("properties").and_then(Yaml::as_mapping);
        let kept: Vec<Json> = names
            .iter()
            .filter(|name| {
                let property = name
                    .as_str()
                    .and_then(|n| properties.and_then(|p| p.get(n)));
                !property.is_some_and(|p| self.is_read_only(p))
            })
            .map(|name| to_json(name, at, &mut Vec::new()))
            .collect();
        (!kept.is_empty()).then_some(Json::Array(kept))
    }

    fn is_read_only(&self, schema: &Yaml) -> bool {
        match follow_refs(self.doc, schema, "") {
            Ok((schema, _)) => matches!(schema.get("readOnly"), Some(Yaml::Bool(true))),
            Err(_) => false,
        }
    }

    /// Rewrites a `$ref` to point under `$defs`, queueing what it points to.
    fn reference(&mut self, reference: &Yaml, at: &str) -> Json {
        let Some(reference) = reference.as_str() else {
            self.error(at, "must be a string");
            return json!("#");
        };
        let (pointer, target) = match resolve(self.doc, reference) {
            Ok(found) => found,
            Err(message) => {
                self.error(at, message);
                return json!(reference);
            }
        };
        let name = match self.def_names.get(&pointer) {
            Some(name) => name.clone(),
            None => {
                // A chain of references that comes back to itself without a
                // schema in between means nothing, and would make the
                // validator loop.
                if let Err(e) = follow_refs(self.doc, target, &pointer_to_path(&pointer)) {
                    self.errors.push(e);
                }
                let name = self.new_def_name(&pointer);
                self.def_names.insert(pointer.clone(), name.clone());
                self.pending
                    .push_back((name.clone(), target, pointer_to_path(&pointer)));
                name
            }
        };
        json!(format!("#/$defs/{name}"))
    }

    /// `Pet` for `/components/schemas/Pet`; the pointer's tokens joined with
    /// `.` for anything else; unique, and safe in a `$ref` without escaping.
    fn new_def_name(&mut self, pointer: &str) -> String {
        let tokens: Vec<String> = pointer.split('/').skip(1).map(unescape_token).collect();
        let tokens = match tokens.as_slice() {
            [components, schemas, rest @ ..]
                if components == "components" && schemas == "schemas" && !rest.is_empty() =>
            {
                rest
            }
            all => all,
        };
        let joined = tokens.join(".");
        let mut base: String = joined
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if base.is_empty() {
            base = "schema".into();
        }
        let mut name = base.clone();
        let mut n = 2;
        while self.used_names.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        self.used_names.insert(name.clone());
        name
    }

    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }
}

/// Parses JSON or YAML text into a YAML value, which keeps the document's order.
fn parse(text: &str) -> Result<Yaml, ConfigError> {
    let mut doc: Yaml = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|e| ConfigError::new("", format!("not a valid JSON document: {e}")))?
    } else {
        serde_yaml::from_str(text)
            .map_err(|e| ConfigError::new("", format!("not a valid YAML document: {e}")))?
    };
    doc.apply_merge()
        .map_err(|e| ConfigError::new("", format!("YAML merge keys: {e}")))?;
    Ok(doc)
}

fn dialect(doc: &Yaml) -> Result<Dialect, ConfigError> {
    if !doc.is_mapping() {
        return Err(ConfigError::new(
            "",
            "an OpenAPI document must be a JSON or YAML object",
        ));
    }
    if let Some(swagger) = doc.get("swagger") {
        return Err(ConfigError::new(
            "openapi",
            format!(
                "this is a Swagger {} (OpenAPI 2) document; only OpenAPI 3.0 and 3.1 are \
                 supported: convert it to OpenAPI 3 first",
                text(swagger)
            ),
        ));
    }
    let version = match doc.get("openapi") {
        None | Some(Yaml::Null) => {
            return Err(ConfigError::new(
                "openapi",
                "missing: not an OpenAPI 3 document (only OpenAPI 3.0 and 3.1 are supported)",
            ))
        }
        // YAML reads an unquoted `openapi: 3.1` as a number.
        Some(Yaml::String(_) | Yaml::Number(_)) => text(&doc["openapi"]),
        Some(_) => return Err(ConfigError::new("openapi", "must be a version string")),
    };
    let is = |minor: &str| version == minor || version.starts_with(&format!("{minor}."));
    if is("3.0") {
        Ok(Dialect::V30)
    } else if is("3.1") {
        Ok(Dialect::V31)
    } else {
        Err(ConfigError::new(
            "openapi",
            format!("version `{version}` is not supported: use OpenAPI 3.0.x or 3.1.x"),
        ))
    }
}

/// The path of the first server URL of `servers` (at `at`), without a
/// trailing `/`: `Some("")` when it has none, `None` when there are no servers.
fn server_prefix(servers: Option<&Yaml>, at: &str) -> Result<Option<String>, ConfigError> {
    let servers = match servers {
        None | Some(Yaml::Null) => return Ok(None),
        Some(Yaml::Sequence(servers)) => servers,
        Some(_) => return Err(ConfigError::new(at, "must be an array of servers")),
    };
    let Some(server) = servers.first() else {
        return Ok(None);
    };
    let url_at = format!("{at}[0].url");
    let Some(template) = server.get("url").and_then(Yaml::as_str) else {
        return Err(ConfigError::new(url_at, "missing: a server needs a `url`"));
    };
    // Replace `{variable}`s by their defaults.
    let mut url = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        url.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            return Err(ConfigError::new(url_at, "a `{` without its `}`"));
        };
        let variable = &rest[open + 1..open + close];
        let default = server
            .get("variables")
            .and_then(|v| v.get(variable))
            .and_then(|v| v.get("default"));
        match default {
            Some(value @ (Yaml::String(_) | Yaml::Number(_))) => url.push_str(&text(value)),
            _ => {
                return Err(ConfigError::new(
                    url_at,
                    format!("server variable `{variable}` has no default"),
                ))
            }
        }
        rest = &rest[open + close + 1..];
    }
    url.push_str(rest);

    let url = url.split(['?', '#']).next().unwrap_or_default();
    let path = if let Some(scheme_end) = url.find("://") {
        let authority_and_path = &url[scheme_end + 3..];
        authority_and_path
            .find('/')
            .map_or("", |i| &authority_and_path[i..])
            .to_string()
    } else if let Some(authority_and_path) = url.strip_prefix("//") {
        authority_and_path
            .find('/')
            .map_or("", |i| &authority_and_path[i..])
            .to_string()
    } else {
        // Relative to where the document is served from; taken from `/`.
        let relative = url.trim_start_matches("./");
        match relative {
            "" | "." => String::new(),
            _ if relative.starts_with('/') => relative.to_string(),
            _ => format!("/{relative}"),
        }
    };
    Ok(Some(path.trim_end_matches('/').to_string()))
}

/// The Tollgate pattern for an OpenAPI path under `prefix`: exact (`=`) without
/// parameters, a prefix pattern with `{param}` segments otherwise.
fn route_pattern(prefix: &str, template: &str) -> Result<String, String> {
    let full = format!("{prefix}{template}");
    let trimmed = full.trim_end_matches('/');
    let mut pattern = String::new();
    let mut templated = false;
    for segment in trimmed.split('/').skip(1) {
        if segment.is_empty() {
            return Err("must not contain an empty segment ('//')".into());
        }
        pattern.push('/');
        if segment.contains(['{', '}']) {
            templated = true;
            pattern.push('{');
            pattern.push_str(&param_name(segment)?);
            pattern.push('}');
        } else if let Some(c) = segment.chars().find(|&c| !is_path_char(c)) {
            // The gateway matches the path as sent, where such a character
            // is percent-encoded, and patterns cannot hold escapes.
            return Err(format!(
                "segment `{segment}`: `{c}` must be percent-encoded in a request, which a \
                 Tollgate pattern cannot match"
            ));
        } else {
            pattern.push_str(segment);
        }
    }
    if pattern.is_empty() {
        pattern.push('/');
    }
    if !templated {
        pattern.insert(0, '=');
    }
    PathPattern::parse(&pattern)
        .map_err(|e| format!("cannot become a route (`{pattern}`): {e}"))?;
    Ok(pattern)
}

/// A character a request path carries as it is (RFC 3986 `pchar`, without `%`).
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c)
}

/// The Tollgate parameter name for a templated segment: `{pet-id}` → `pet_id`;
/// `{name}.{ext}` → `name_ext`.
fn param_name(segment: &str) -> Result<String, String> {
    let mut names = Vec::new();
    let mut rest = segment;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("segment `{segment}`: a `{{` without its `}}`"));
        };
        names.push(&rest[open + 1..open + close]);
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') || names.is_empty() {
        return Err(format!("segment `{segment}`: a `}}` without its `{{`"));
    }
    let name: String = names
        .join("_")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Ok(if name.is_empty() {
        "param".into()
    } else {
        name
    })
}

/// What the router tells apart in a pattern: parameter names do not count.
fn route_key(pattern: &str) -> String {
    match PathPattern::parse(pattern) {
        Ok(PathPattern::Exact(path)) => format!("={path}"),
        Ok(PathPattern::Prefix(segments)) => segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => format!("/{l}"),
                Segment::Param(_) => "/{}".to_string(),
            })
            .collect(),
        Err(_) => pattern.to_string(),
    }
}

/// `application/json`, or a `+json` type, parameters ignored.
fn is_json_media_type(media: &str) -> bool {
    let essence = media
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || (essence.contains('/') && essence.ends_with("+json"))
}

fn accepts_anything(schema: &Json) -> bool {
    match schema {
        Json::Bool(b) => *b,
        Json::Object(map) => map.is_empty(),
        _ => false,
    }
}

/// The Tollgate name rule (the same as `validate.rs`).
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Letters, digits, `_` and `.` kept; any run of other characters becomes one `-`.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '.') {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// The first `max` bytes of an ASCII name.
fn cut(name: &str, max: usize) -> String {
    name.chars().take(max).collect()
}

/// Follows `$ref`s from `value` until something else; returns it with its path.
fn follow_refs<'d>(
    doc: &'d Yaml,
    mut value: &'d Yaml,
    at: &str,
) -> Result<(&'d Yaml, String), ConfigError> {
    let mut at = at.to_string();
    for _ in 0..MAX_REF_CHAIN {
        let Some(reference) = value.get("$ref") else {
            return Ok((value, at));
        };
        let ref_at = format!("{at}.$ref");
        let Some(reference) = reference.as_str() else {
            return Err(ConfigError::new(ref_at, "must be a string"));
        };
        let (pointer, target) =
            resolve(doc, reference).map_err(|message| ConfigError::new(&ref_at, message))?;
        value = target;
        at = pointer_to_path(&pointer);
    }
    Err(ConfigError::new(
        at,
        format!("more than {MAX_REF_CHAIN} `$ref`s in a row (a cycle?)"),
    ))
}

/// Resolves a local reference (`#/components/schemas/Pet`) to its decoded
/// JSON pointer and the value it points to.
fn resolve<'d>(doc: &'d Yaml, reference: &str) -> Result<(String, &'d Yaml), String> {
    let Some(fragment) = reference.strip_prefix('#') else {
        return Err(format!(
            "`{reference}`: only references inside this document (`#/…`) are supported"
        ));
    };
    let pointer =
        percent_decode(fragment).ok_or_else(|| format!("`{reference}`: bad percent-encoding"))?;
    if pointer.is_empty() {
        return Err(format!("`{reference}` refers to the whole document"));
    }
    if !pointer.starts_with('/') {
        return Err(format!(
            "`{reference}`: only JSON-pointer references (`#/…`) are supported"
        ));
    }
    let mut value = doc;
    for token in pointer.split('/').skip(1) {
        let token = unescape_token(token);
        let next = match untag(value) {
            Yaml::Mapping(map) => map.iter().find(|(k, _)| text(k) == token).map(|(_, v)| v),
            Yaml::Sequence(list) => token.parse::<usize>().ok().and_then(|i| list.get(i)),
            _ => None,
        };
        value = next.ok_or_else(|| format!("`{reference}` does not resolve in this document"))?;
    }
    Ok((pointer, value))
}

/// `components.schemas.Pet` for `/components/schemas/Pet`: the error-path form.
fn pointer_to_path(pointer: &str) -> String {
    pointer
        .split('/')
        .skip(1)
        .map(unescape_token)
        .collect::<Vec<_>>()
        .join(".")
}

fn unescape_token(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Decodes `%XX` escapes (a URI fragment); `None` for a malformed one or
/// bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn untag(value: &Yaml) -> &Yaml {
    match value {
        Yaml::Tagged(tagged) => untag(&tagged.value),
        other => other,
    }
}

/// A scalar as text (keys, versions, variables); other values as YAML.
fn text(value: &Yaml) -> String {
    match untag(value) {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Null => "null".into(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Converts data (an `enum`, a `default`, …) to JSON; a value JSON cannot
/// hold (`.nan`, a non-scalar key) is an error at `at`.
fn to_json(value: &Yaml, at: &str, errors: &mut Vec<ConfigError>) -> Json {
    match untag(value) {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Json::from(i)
            } else if let Some(u) = n.as_u64() {
                Json::from(u)
            } else {
                match n.as_f64().and_then(serde_json::Number::from_f64) {
                    Some(number) => Json::Number(number),
                    None => {
                        errors.push(ConfigError::new(at, format!("`{n}` is not a JSON number")));
                        Json::Null
                    }
                }
            }
        }
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(list) => Json::Array(
            list.iter()
                .enumerate()
                .map(|(i, v)| to_json(v, &format!("{at}[{i}]"), errors))
                .collect(),
        ),
        Yaml::Mapping(map) => {
            let mut out = Map::new();
            for (key, v) in map {
                if matches!(untag(key), Yaml::Sequence(_) | Yaml::Mapping(_)) {
                    errors.push(ConfigError::new(at, "a key must be a string"));
                    continue;
                }
                let key = text(key);
                let converted = to_json(v, &format!("{at}.{key}"), errors);
                out.insert(key, converted);
            }
            Json::Object(out)
        }
        Yaml::Tagged(_) => Json::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_paths_are_exact_and_templates_are_prefixes() {
        assert_eq!(route_pattern("", "/pet").unwrap(), "=/pet");
        assert_eq!(
            route_pattern("/api/v3", "/pet/findByStatus").unwrap(),
            "=/api/v3/pet/findByStatus"
        );
        assert_eq!(
            route_pattern("/api/v3", "/pet/{petId}").unwrap(),
            "/api/v3/pet/{petId}"
        );
        assert_eq!(route_pattern("", "/").unwrap(), "=/");
        assert_eq!(route_pattern("/v1", "/").unwrap(), "=/v1");
        assert_eq!(route_pattern("", "/pets/").unwrap(), "=/pets");
        assert_eq!(route_pattern("", "/a/{pet-id}").unwrap(), "/a/{pet_id}");
        assert_eq!(
            route_pattern("", "/files/{name}.{ext}").unwrap(),
            "/files/{name_ext}"
        );
        assert!(route_pattern("", "/a//b").is_err());
        assert!(route_pattern("", "/a/{b").is_err());
        assert!(route_pattern("", "/a/b}").is_err());
        assert!(route_pattern("", "/a/%20").is_err());
        assert!(route_pattern("", "/a b").is_err());
        assert!(route_pattern("", "/ünï").is_err());
        assert_eq!(
            route_pattern("", "/v1/items:batchGet").unwrap(),
            "=/v1/items:batchGet"
        );
    }

    #[test]
    fn route_keys_ignore_parameter_names() {
        assert_eq!(route_key("/a/{x}/b"), route_key("/a/{y}/b"));
        assert_ne!(route_key("=/a"), route_key("/a"));
    }

    #[test]
    fn server_prefixes() {
        let prefix = |yaml: &str| {
            let servers: Yaml = serde_yaml::from_str(yaml).unwrap();
            server_prefix(Some(&servers), "servers")
        };
        assert_eq!(prefix("[{url: /api/v3}]").unwrap().unwrap(), "/api/v3");
        assert_eq!(prefix("[{url: /api/v3/}]").unwrap().unwrap(), "/api/v3");
        assert_eq!(
            prefix("[{url: 'https://petstore3.swagger.io/api/v3'}]")
                .unwrap()
                .unwrap(),
            "/api/v3"
        );
        assert_eq!(
            prefix("[{url: 'https://example.com'}]").unwrap().unwrap(),
            ""
        );
        assert_eq!(
            prefix("[{url: 'https://example.com/'}]").unwrap().unwrap(),
            ""
        );
        assert_eq!(
            prefix("[{url: '//example.com/v2?x=1'}]").unwrap().unwrap(),
            "/v2"
        );
        assert_eq!(prefix("[{url: v2}]").unwrap().unwrap(), "/v2");
        assert_eq!(prefix("[{url: ./v2}]").unwrap().unwrap(), "/v2");
        assert_eq!(prefix("[{url: .}]").unwrap().unwrap(), "");
        assert_eq!(prefix("[]").unwrap(), None);
        assert_eq!(
            prefix("[{url: '{scheme}://api.example.com/{base}', variables: {scheme: {default: https}, base: {default: v1, enum: [v1, v2]}}}]")
                .unwrap()
                .unwrap(),
            "/v1"
        );
        let err = prefix("[{url: 'https://x/{base}'}]").unwrap_err();
        assert_eq!(err.path, "servers[0].url");
        assert!(err.message.contains("`base`"), "{err}");
    }

    #[test]
    fn slugs_keep_name_characters() {
        assert_eq!(slug("addPet"), "addPet");
        assert_eq!(slug("get-/pet/{petId}"), "get-pet-petId");
        assert_eq!(slug("pets/list all"), "pets-list-all");
        assert_eq!(slug("get-/"), "get");
        assert_eq!(slug("v1.pets_list"), "v1.pets_list");
        assert_eq!(slug("ünïcode"), "n-code");
    }

    #[test]
    fn json_media_types() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(is_json_media_type("Application/JSON"));
        assert!(is_json_media_type("application/merge-patch+json"));
        assert!(!is_json_media_type("application/xml"));
        assert!(!is_json_media_type("application/*"));
        assert!(!is_json_media_type("*/*"));
        assert!(!is_json_media_type("text/plain"));
    }

    #[test]
    fn references_are_json_pointers() {
        let doc: Yaml = serde_yaml::from_str(
            "paths: {'/a/{b}': {get: {x: 1}}}\ncomponents: {schemas: {'A B': {type: string}, list: [{type: integer}]}}",
        )
        .unwrap();
        let (pointer, value) = resolve(&doc, "#/paths/~1a~1%7Bb%7D/get/x").unwrap();
        assert_eq!(pointer, "/paths/~1a~1{b}/get/x");
        assert_eq!(value.as_i64(), Some(1));
        assert!(resolve(&doc, "#/components/schemas/A%20B").is_ok());
        assert!(resolve(&doc, "#/components/schemas/list/0").is_ok());
        assert!(resolve(&doc, "#/components/schemas/list/1").is_err());
        assert!(resolve(&doc, "#").is_err());
        assert!(resolve(&doc, "#anchor").is_err());
        assert!(resolve(&doc, "other.yaml#/A").is_err());
        assert_eq!(pointer_to_path("/paths/~1a~1{b}/get"), "paths./a/{b}.get");
    }

    #[test]
    fn def_names_are_unique_and_ref_safe() {
        let doc = Yaml::Null;
        let mut builder = SchemaBuilder::new(&doc, Dialect::V31);
        assert_eq!(builder.new_def_name("/components/schemas/Pet"), "Pet");
        assert_eq!(builder.new_def_name("/components/schemas/Pet"), "Pet-2");
        assert_eq!(builder.new_def_name("/components/schemas/a~1b c"), "a_b_c");
        assert_eq!(
            builder.new_def_name("/components/requestBodies/Pet/content/application~1json/schema"),
            "components.requestBodies.Pet.content.application_json.schema"
        );
    }
}
