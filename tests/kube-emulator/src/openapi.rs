//! Just enough OpenAPI for kubectl.
//!
//! - `/openapi/v3` and `/openapi/v3/<gv>`: one document per group/version whose PATCH operations
//!   declare the `fieldValidation` parameter, so kubectl leaves validation to the server (which runs
//!   the CRD schema) instead of validating client-side; and whose component schemas carry the CRD's
//!   `openAPIV3Schema`, which `kubectl explain` renders. Built-in kinds get an open schema (no field
//!   documentation) and do not advertise strategic merge patch, so kubectl computes those patches
//!   from its compiled-in Go types.
//! - `/openapi/v2`: a protobuf document with no definitions. kubectl still downloads it to validate
//!   Namespaces client-side (it never trusts server-side validation for them) and skips kinds the
//!   document does not define.

use serde_json::{Map, Value, json};

use crate::resources::ResourceType;

/// The protobuf encoding of `openapi_v2.Document{swagger: "2.0"}`: field 1, wire type 2, length 3.
pub const V2_DOCUMENT: &[u8] = b"\x0a\x032.0";

fn gv_path(t: &ResourceType) -> String {
    if t.group.is_empty() {
        format!("api/{}", t.version)
    } else {
        format!("apis/{}/{}", t.group, t.version)
    }
}

/// The schema name the API server uses: reversed group, version, kind.
fn schema_name(t: &ResourceType) -> String {
    if t.group.is_empty() {
        return format!("io.k8s.api.core.{}.{}", t.version, t.kind);
    }
    let reversed: Vec<&str> = t.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), t.version, t.kind)
}

/// `/openapi/v3`: the index of group/version documents.
pub fn index(types: &[ResourceType], hash: u64) -> Value {
    let mut paths = Map::new();
    for t in types {
        let p = gv_path(t);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash:016X}")}),
        );
    }
    json!({"paths": paths})
}

fn gvk(t: &ResourceType) -> Value {
    json!({"group": t.group, "version": t.version, "kind": t.kind})
}

fn kind_schema(t: &ResourceType) -> Value {
    let mut schema = t
        .schema
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    let properties = schema
        .as_object_mut()
        .expect("schemas are objects")
        .entry("properties")
        .or_insert_with(|| json!({}));
    properties["apiVersion"] = json!({
        "type": "string",
        "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"
    });
    properties["kind"] = json!({
        "type": "string",
        "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"
    });
    properties["metadata"] = json!({
        "type": "object",
        "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
    });
    schema["x-kubernetes-group-version-kind"] = json!([gvk(t)]);
    schema
}

/// `/openapi/v3/<api/v1 | apis/group/version>`, if served.
pub fn group_version(types: &[ResourceType], gv: &str) -> Option<Value> {
    let served: Vec<&ResourceType> = types.iter().filter(|t| gv_path(t) == gv).collect();
    if served.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for t in served {
        let name = schema_name(t);
        let reference = json!({"schema": {"$ref": format!("#/components/schemas/{name}")}});
        let mut content = Map::new();
        for media in [
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
        ] {
            content.insert(media.into(), json!({"schema": {"type": "object"}}));
        }
        let params = json!([
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}
        ]);
        let ok = json!({"200": {"description": "OK", "content": {"application/json": reference}}});
        let item = json!({
            "get": {"operationId": format!("read{}", t.kind), "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk(t), "responses": ok},
            "put": {"operationId": format!("replace{}", t.kind), "x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk(t), "parameters": params, "requestBody": {"content": {"application/json": reference}}, "responses": ok},
            "patch": {"operationId": format!("patch{}", t.kind), "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk(t), "parameters": params, "requestBody": {"content": content}, "responses": ok},
            "delete": {"operationId": format!("delete{}", t.kind), "x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk(t), "responses": ok},
        });
        let prefix = format!("/{}", gv_path(t));
        let path = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{prefix}/{}/{{name}}", t.plural)
        };
        paths.insert(path, item);
        schemas.insert(name, kind_schema(t));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
