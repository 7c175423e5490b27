//! A small reader of the OpenAPI 3.1 documents in `docs/openapi/`: finds the documented answer
//! of an operation and validates JSON against the JSON Schema subset those documents use.
//!
//! Supported validation keywords: `$ref` (local `#/…` pointers), `type`, `enum`, `const`,
//! `required`, `properties`, `additionalProperties`, `items`, `oneOf`, `anyOf`, `allOf`,
//! `minLength`, `maxLength`, `minimum`, `maximum`, `minItems`, `maxItems`, and `format` for
//! `uuid` and `date-time`. Any other keyword in a schema is reported by [`OpenApiDoc::lint`], so
//! a document never claims a constraint that nothing checks.

use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// The HTTP methods an OpenAPI path item may hold.
pub const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Schema keywords that only annotate (never constrain) and are therefore accepted as they are.
const ANNOTATIONS: [&str; 6] = [
    "description",
    "title",
    "default",
    "examples",
    "deprecated",
    "summary",
];

/// Schema keywords the validator checks.
const CHECKED: [&str; 17] = [
    "$ref",
    "type",
    "enum",
    "const",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "oneOf",
    "anyOf",
    "allOf",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
];

/// Why an OpenAPI document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The text is not JSON.
    #[error("the OpenAPI document is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON is not an OpenAPI 3 document.
    #[error("not an OpenAPI 3 document: {0}")]
    NotOpenApi(String),
}

/// The answer an operation documents for one status.
#[derive(Debug, Clone, Copy)]
pub struct DocumentedResponse<'a> {
    /// The key it is documented under: the status itself, a range like `4XX`, or `default`.
    pub key: &'a str,
    /// The response object (with `$ref` resolved).
    pub response: &'a Value,
}

/// A parsed OpenAPI 3 document.
#[derive(Debug, Clone)]
pub struct OpenApiDoc {
    /// The whole document.
    root: Value,
}

impl OpenApiDoc {
    /// Parses `text`, which must be a JSON object with `openapi: "3.…"` and a `paths` object.
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        let root: Value = serde_json::from_str(text)?;
        let version = root
            .get("openapi")
            .and_then(Value::as_str)
            .ok_or_else(|| SchemaError::NotOpenApi("no \"openapi\" version string".into()))?;
        if !version.starts_with("3.") {
            return Err(SchemaError::NotOpenApi(format!(
                "version {version} is not 3.x"
            )));
        }
        if !root.get("paths").is_some_and(Value::is_object) {
            return Err(SchemaError::NotOpenApi("no \"paths\" object".into()));
        }
        if !root.pointer("/info/title").is_some_and(Value::is_string) {
            return Err(SchemaError::NotOpenApi("no info.title".into()));
        }
        Ok(Self { root })
    }

    /// The document as JSON.
    pub fn value(&self) -> &Value {
        &self.root
    }

    /// Every documented operation as (upper-case method, path), sorted.
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in self.paths() {
            for method in METHODS {
                if item.get(method).is_some() {
                    out.insert((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    /// The operation object of `method` (any case) on `path`, if documented.
    pub fn operation(&self, method: &str, path: &str) -> Option<&Value> {
        self.root
            .get("paths")?
            .get(path)?
            .get(method.to_ascii_lowercase())
    }

    /// The response documented for `status`: the exact code, else its range (`4XX`), else
    /// `default`.
    pub fn response(
        &self,
        method: &str,
        path: &str,
        status: u16,
    ) -> Option<DocumentedResponse<'_>> {
        let responses = self
            .operation(method, path)?
            .get("responses")?
            .as_object()?;
        let exact = status.to_string();
        let range = format!("{}XX", status / 100);
        for key in [exact.as_str(), range.as_str(), "default"] {
            if let Some((key, response)) = responses.get_key_value(key) {
                return Some(DocumentedResponse {
                    key,
                    response: self.resolve(response)?,
                });
            }
        }
        None
    }

    /// Checks an answer against the document: its status is documented for the operation and,
    /// when the documented response has content, the content type is documented and the body
    /// matches its schema. `Err` says what does not match.
    pub fn check_answer(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(), String> {
        let documented = self
            .response(method, path, status)
            .ok_or_else(|| format!("status {status} is not documented for {method} {path}"))?;
        let Some(content) = documented
            .response
            .get("content")
            .and_then(Value::as_object)
        else {
            return Ok(());
        };
        let media = content_type
            .and_then(|ct| ct.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let Some(media_type) = content.get(&media) else {
            let expected: Vec<&String> = content.keys().collect();
            return Err(format!(
                "{status} answer has Content-Type '{}', documented: {expected:?}",
                content_type.unwrap_or("(none)")
            ));
        };
        let Some(schema) = media_type.get("schema") else {
            return Ok(());
        };
        let instance = if media == "application/json" {
            serde_json::from_slice::<Value>(body)
                .map_err(|e| format!("{status} answer is not JSON: {e}"))?
        } else {
            Value::String(
                String::from_utf8(body.to_vec())
                    .map_err(|_| format!("{status} answer is not UTF-8 text"))?,
            )
        };
        let errors = self.validate(schema, &instance);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{status} answer does not match the schema documented under '{}': {}",
                documented.key,
                errors.join("; ")
            ))
        }
    }

    /// Validates `instance` against `schema` (which may use `$ref`s into this document);
    /// returns every violation found, each with the JSON pointer where it is.
    pub fn validate(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.validate_at(schema, instance, "", &mut errors, 0);
        errors
    }

    /// Structural checks of the document: every `$ref` resolves, operation ids are unique,
    /// every operation has responses, every `{param}` of a path is declared, and schemas use
    /// only keywords this validator checks or pure annotations. Returns the problems found.
    pub fn lint(&self) -> Vec<String> {
        let mut problems = Vec::new();
        self.lint_refs(&self.root, "", &mut problems);
        let mut ids = BTreeSet::new();
        for (path, item) in self.paths() {
            for method in METHODS {
                let Some(op) = item.get(method) else { continue };
                let at = format!("{} {path}", method.to_ascii_uppercase());
                match op.get("operationId").and_then(Value::as_str) {
                    Some(id) if !ids.insert(id.to_owned()) => {
                        problems.push(format!("{at}: operationId {id} is used twice"));
                    }
                    Some(_) => {}
                    None => problems.push(format!("{at}: no operationId")),
                }
                match op.get("responses").and_then(Value::as_object) {
                    Some(r) if !r.is_empty() => {
                        for (status, response) in r {
                            self.lint_response(&at, status, response, &mut problems);
                        }
                    }
                    _ => problems.push(format!("{at}: no responses")),
                }
                self.lint_path_params(&at, path, item, op, &mut problems);
                if let Some(body) = op.pointer("/requestBody/content") {
                    for (media, m) in body.as_object().into_iter().flatten() {
                        if let Some(schema) = m.get("schema") {
                            self.lint_schema(
                                schema,
                                &format!("{at} request {media}"),
                                &mut problems,
                            );
                        }
                    }
                }
            }
        }
        if let Some(schemas) = self
            .root
            .pointer("/components/schemas")
            .and_then(Value::as_object)
        {
            for (name, schema) in schemas {
                self.lint_schema(schema, &format!("components.schemas.{name}"), &mut problems);
            }
        }
        problems
    }

    /// The `paths` object's entries.
    fn paths(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.root
            .get("paths")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
    }

    /// `value`, or what its `$ref` points to (following chains of refs).
    fn resolve<'a>(&'a self, mut value: &'a Value) -> Option<&'a Value> {
        for _ in 0..32 {
            match value.get("$ref").and_then(Value::as_str) {
                Some(reference) => value = self.pointer(reference)?,
                None => return Some(value),
            }
        }
        None
    }

    /// The target of a local reference `#/a/b`.
    fn pointer(&self, reference: &str) -> Option<&Value> {
        self.root.pointer(reference.strip_prefix('#')?)
    }

    fn validate_at(
        &self,
        schema: &Value,
        instance: &Value,
        at: &str,
        errors: &mut Vec<String>,
        depth: usize,
    ) {
        let here = if at.is_empty() { "/" } else { at };
        if depth > 64 {
            errors.push(format!("at {here}: schema nesting too deep"));
            return;
        }
        let schema = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                errors.push(format!("at {here}: no value is allowed here"));
                return;
            }
            Value::Object(map) => map,
            _ => {
                errors.push(format!("at {here}: the document's schema is not an object"));
                return;
            }
        };
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            match self.pointer(reference) {
                Some(target) => self.validate_at(target, instance, at, errors, depth + 1),
                None => errors.push(format!("at {here}: unresolved $ref {reference}")),
            }
        }
        if let Some(types) = schema.get("type") {
            let allowed: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if !allowed.iter().any(|t| has_type(instance, t)) {
                errors.push(format!(
                    "at {here}: {} is not of type {}",
                    short(instance),
                    allowed.join(" or ")
                ));
                return;
            }
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array)
            && !options.contains(instance)
        {
            errors.push(format!(
                "at {here}: {} is not one of {}",
                short(instance),
                Value::Array(options.clone())
            ));
        }
        if let Some(expected) = schema.get("const")
            && expected != instance
        {
            errors.push(format!("at {here}: {} is not {expected}", short(instance)));
        }
        self.validate_combinators(schema, instance, at, errors, depth);
        match instance {
            Value::Object(object) => self.validate_object(schema, object, at, errors, depth),
            Value::Array(items) => {
                let len = items.len() as u64;
                if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                    && len < min
                {
                    errors.push(format!("at {here}: {len} items, at least {min} expected"));
                }
                if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                    && len > max
                {
                    errors.push(format!("at {here}: {len} items, at most {max} allowed"));
                }
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.validate_at(
                            item_schema,
                            item,
                            &format!("{at}/{i}"),
                            errors,
                            depth + 1,
                        );
                    }
                }
            }
            Value::String(text) => validate_string(schema, text, here, errors),
            Value::Number(n) => {
                if let (Some(min), Some(v)) =
                    (schema.get("minimum").and_then(Value::as_f64), n.as_f64())
                    && v < min
                {
                    errors.push(format!("at {here}: {n} is below the minimum {min}"));
                }
                if let (Some(max), Some(v)) =
                    (schema.get("maximum").and_then(Value::as_f64), n.as_f64())
                    && v > max
                {
                    errors.push(format!("at {here}: {n} is above the maximum {max}"));
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }

    fn validate_combinators(
        &self,
        schema: &Map<String, Value>,
        instance: &Value,
        at: &str,
        errors: &mut Vec<String>,
        depth: usize,
    ) {
        let here = if at.is_empty() { "/" } else { at };
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for sub in all {
                self.validate_at(sub, instance, at, errors, depth + 1);
            }
        }
        if let Some(any) = schema.get("anyOf").and_then(Value::as_array)
            && !any
                .iter()
                .any(|sub| self.validate(sub, instance).is_empty())
        {
            errors.push(format!(
                "at {here}: {} matches none of anyOf",
                short(instance)
            ));
        }
        if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
            let failures: Vec<Vec<String>> = one
                .iter()
                .map(|sub| {
                    let mut sub_errors = Vec::new();
                    self.validate_at(sub, instance, at, &mut sub_errors, depth + 1);
                    sub_errors
                })
                .collect();
            let matching = failures.iter().filter(|f| f.is_empty()).count();
            if matching != 1 {
                let why = failures
                    .iter()
                    .filter(|f| !f.is_empty())
                    .map(|f| f.join(", "))
                    .collect::<Vec<_>>()
                    .join(" | ");
                errors.push(format!(
                    "at {here}: {} matches {matching} of the oneOf alternatives, exactly 1 expected ({why})",
                    short(instance)
                ));
            }
        }
    }

    fn validate_object(
        &self,
        schema: &Map<String, Value>,
        object: &Map<String, Value>,
        at: &str,
        errors: &mut Vec<String>,
        depth: usize,
    ) {
        let here = if at.is_empty() { "/" } else { at };
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(name) {
                errors.push(format!("at {here}: required field \"{name}\" is missing"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (name, value) in object {
            let child = format!("{at}/{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(property) => self.validate_at(property, value, &child, errors, depth + 1),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errors.push(format!("at {here}: field \"{name}\" is not documented"));
                    }
                    Some(extra @ Value::Object(_)) => {
                        self.validate_at(extra, value, &child, errors, depth + 1);
                    }
                    _ => {}
                },
            }
        }
    }

    fn lint_refs(&self, value: &Value, at: &str, problems: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(reference) = map.get("$ref") {
                    let ok = reference
                        .as_str()
                        .is_some_and(|r| r.starts_with("#/") && self.pointer(r).is_some());
                    if !ok {
                        problems.push(format!("{at}: $ref {reference} does not resolve"));
                    }
                }
                for (k, v) in map {
                    self.lint_refs(v, &format!("{at}/{k}"), problems);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.lint_refs(v, &format!("{at}/{i}"), problems);
                }
            }
            _ => {}
        }
    }

    fn lint_response(&self, at: &str, status: &str, response: &Value, problems: &mut Vec<String>) {
        let status_ok = status == "default"
            || (status.len() == 3
                && status.as_bytes()[0].is_ascii_digit()
                && (status[1..].bytes().all(|b| b.is_ascii_digit()) || &status[1..] == "XX"));
        if !status_ok {
            problems.push(format!(
                "{at}: '{status}' is not a status, a range or default"
            ));
        }
        let Some(response) = self.resolve(response) else {
            return;
        };
        if !response.get("description").is_some_and(Value::is_string) {
            problems.push(format!("{at} {status}: no description"));
        }
        for (media, m) in response
            .get("content")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            match m.get("schema") {
                Some(schema) => {
                    self.lint_schema(schema, &format!("{at} {status} {media}"), problems);
                }
                None => problems.push(format!("{at} {status} {media}: no schema")),
            }
        }
    }

    fn lint_path_params(
        &self,
        at: &str,
        path: &str,
        item: &Value,
        op: &Value,
        problems: &mut Vec<String>,
    ) {
        let declared: BTreeSet<String> = [item.get("parameters"), op.get("parameters")]
            .into_iter()
            .flatten()
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(|p| self.resolve(p))
            .filter(|p| p.get("in").and_then(Value::as_str) == Some("path"))
            .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect();
        let used: BTreeSet<String> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        if declared != used {
            problems.push(format!(
                "{at}: path parameters {used:?} but declared {declared:?}"
            ));
        }
    }

    fn lint_schema(&self, schema: &Value, at: &str, problems: &mut Vec<String>) {
        match schema {
            Value::Bool(_) => {}
            Value::Object(map) => {
                for (key, value) in map {
                    let known = CHECKED.contains(&key.as_str())
                        || ANNOTATIONS.contains(&key.as_str())
                        || key == "format";
                    if !known {
                        problems.push(format!(
                            "{at}: keyword '{key}' is not checked by the validator"
                        ));
                    }
                    match key.as_str() {
                        "properties" => {
                            for (name, sub) in value.as_object().into_iter().flatten() {
                                self.lint_schema(sub, &format!("{at}.{name}"), problems);
                            }
                        }
                        "items" | "additionalProperties" => {
                            self.lint_schema(value, &format!("{at}.{key}"), problems);
                        }
                        "oneOf" | "anyOf" | "allOf" => {
                            for (i, sub) in value.as_array().into_iter().flatten().enumerate() {
                                self.lint_schema(sub, &format!("{at}.{key}[{i}]"), problems);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => problems.push(format!("{at}: a schema must be an object or a boolean")),
        }
    }
}

/// True when `instance` has the JSON Schema type `name`.
fn has_type(instance: &Value, name: &str) -> bool {
    match name {
        "object" => instance.is_object(),
        "array" => instance.is_array(),
        "string" => instance.is_string(),
        "boolean" => instance.is_boolean(),
        "null" => instance.is_null(),
        "number" => instance.is_number(),
        "integer" => {
            instance.is_i64()
                || instance.is_u64()
                || instance.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

/// Checks the string keywords and the formats the documents use.
fn validate_string(schema: &Map<String, Value>, text: &str, here: &str, errors: &mut Vec<String>) {
    let len = text.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        errors.push(format!(
            "at {here}: {len} characters, at least {min} expected"
        ));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        errors.push(format!(
            "at {here}: {len} characters, at most {max} allowed"
        ));
    }
    match schema.get("format").and_then(Value::as_str) {
        Some("uuid") if uuid::Uuid::parse_str(text).is_err() => {
            errors.push(format!("at {here}: \"{text}\" is not a UUID"));
        }
        Some("date-time") if chrono::DateTime::parse_from_rfc3339(text).is_err() => {
            errors.push(format!(
                "at {here}: \"{text}\" is not an RFC 3339 date-time"
            ));
        }
        _ => {}
    }
}

/// `value` as compact JSON, cut to a readable length.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> OpenApiDoc {
        let text = json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {"/x/{id}": {"post": {
                "operationId": "x",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}},
                    "4XX": {"description": "bad", "content": {"application/json": {"schema": {"type": "object", "required": ["error"]}}}}
                }
            }}},
            "components": {"schemas": {"Thing": {
                "type": "object", "required": ["id", "n"], "additionalProperties": false,
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "n": {"type": ["integer", "null"], "minimum": 1},
                    "kind": {"oneOf": [{"const": "a"}, {"const": "b"}]}
                }
            }}}
        })
        .to_string();
        OpenApiDoc::parse(&text).unwrap()
    }

    #[test]
    fn valid_answers_pass_and_each_violation_is_named() {
        let d = doc();
        let ok = br#"{"id":"0193a1b2-0000-7000-8000-000000000000","n":null,"kind":"a"}"#;
        assert_eq!(
            d.check_answer("POST", "/x/{id}", 200, Some("application/json"), ok),
            Ok(())
        );
        let bad = br#"{"id":"nope","n":0,"kind":"c","extra":1}"#;
        let err = d
            .check_answer("POST", "/x/{id}", 200, Some("application/json"), bad)
            .unwrap_err();
        for needle in [
            "not a UUID",
            "below the minimum",
            "0 of the oneOf",
            "\"extra\" is not documented",
        ] {
            assert!(err.contains(needle), "{needle} missing in {err}");
        }
        let missing = d
            .check_answer("POST", "/x/{id}", 200, Some("application/json"), b"{}")
            .unwrap_err();
        assert!(missing.contains("\"id\" is missing"), "{missing}");
    }

    #[test]
    fn statuses_fall_back_to_ranges_and_undocumented_ones_fail() {
        let d = doc();
        assert_eq!(d.response("post", "/x/{id}", 422).unwrap().key, "4XX");
        assert!(d.response("post", "/x/{id}", 500).is_none());
        let err = d
            .check_answer("POST", "/x/{id}", 500, Some("application/json"), b"{}")
            .unwrap_err();
        assert!(err.contains("not documented"), "{err}");
        let wrong_type = d
            .check_answer("POST", "/x/{id}", 200, Some("text/plain"), b"{}")
            .unwrap_err();
        assert!(wrong_type.contains("Content-Type"), "{wrong_type}");
        let not_json = d
            .check_answer(
                "POST",
                "/x/{id}",
                400,
                Some("application/json; charset=utf-8"),
                b"oops",
            )
            .unwrap_err();
        assert!(not_json.contains("not JSON"), "{not_json}");
    }

    #[test]
    fn lint_finds_broken_refs_unchecked_keywords_and_undeclared_params() {
        let text = json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {"/y/{id}": {"get": {
                "operationId": "y",
                "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Missing"}}}}}
            }, "put": {
                "operationId": "y",
                "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "string", "pattern": "^a$"}}}}}
            }}}
        })
        .to_string();
        let problems = OpenApiDoc::parse(&text).unwrap().lint();
        let all = problems.join("\n");
        for needle in [
            "does not resolve",
            "'pattern' is not checked",
            "operationId y is used twice",
            "path parameters",
        ] {
            assert!(all.contains(needle), "{needle} missing in {all}");
        }
        assert!(doc().lint().is_empty(), "{:?}", doc().lint());
    }

    #[test]
    fn documents_that_are_not_openapi_3_are_refused() {
        assert!(OpenApiDoc::parse("[]").is_err());
        assert!(OpenApiDoc::parse(r#"{"swagger":"2.0","paths":{}}"#).is_err());
        assert!(OpenApiDoc::parse(r#"{"openapi":"2.0","paths":{},"info":{"title":"t"}}"#).is_err());
        assert!(OpenApiDoc::parse("{").is_err());
    }
}
