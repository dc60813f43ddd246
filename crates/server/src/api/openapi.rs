//! The REST API's OpenAPI 3.1 document, generated from the handlers.
//!
//! Every handler carries a `#[utoipa::path]` attribute (its method, path,
//! parameters, body, answers and security), and routes are added to the
//! router only through [`ApiRouter::routes`], which takes what
//! `utoipa_axum::routes!()` makes of such handlers: a route cannot be served
//! without being documented. [`document`] is served at `GET /openapi.json`.
//!
//! Besides what the attributes say, [`document`] gives every operation an
//! `operationId` derived from its method and path (`postV2SandboxesIdConnect`),
//! E2B's [`Error`] body as its `default` answer, and a 401 on the routes that
//! take a key; the security schemes are `api_key` (`X-API-Key`, the default),
//! `access_token` (`Authorization: Bearer`, E2B's access tokens) and
//! `volume_token` (the volume content API's bearer token).

use std::sync::{Arc, OnceLock};

use axum::Router;
use serde::Serialize;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{Content, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use super::{
    builds, cli_login, e2b_templates, keys, nodes, pool, sandboxes, scrape, snapshots,
    template_catalog, templates, volume_content, volumes,
};
use crate::state::AppState;

/// E2B's error body, the answer of every failed request (but the volume
/// content API's and the OAuth endpoints').
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Error {
    /// The HTTP status.
    pub code: u16,
    /// What went wrong.
    pub message: String,
}

/// The error body of E2B's volume content API: a code name such as
/// `PATH_NOT_FOUND` and a message.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VolumeContentError {
    /// `UNAUTHENTICATED`, `INVALID_REQUEST`, `PATH_NOT_FOUND`,
    /// `PATH_ALREADY_EXISTS`, `CANNOT_DELETE_ROOT`, `NO_SPACE` or `INTERNAL`.
    pub code: String,
    /// What went wrong.
    pub message: String,
}

/// Raw bytes: a tar archive or a file's content.
pub(crate) struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl ToSchema for Binary {}

/// `GET /health`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`.
    pub status: String,
}

/// A router that serves documented routes only: it takes routes as
/// `utoipa_axum::routes!()` makes them, and records each path and method it
/// serves.
pub(crate) struct ApiRouter {
    router: OpenApiRouter<Arc<AppState>>,
    served: Vec<(String, String)>,
}

impl ApiRouter {
    pub(crate) fn new() -> ApiRouter {
        ApiRouter {
            router: OpenApiRouter::new(),
            served: Vec::new(),
        }
    }

    /// Adds the routes of `routes!(handler, ...)`: axum serves each at the
    /// path and methods of its `#[utoipa::path]`, and the document gets
    /// its operations.
    pub(crate) fn routes(mut self, routes: UtoipaMethodRouter<Arc<AppState>>) -> ApiRouter {
        for (path, item) in &routes.1.paths {
            for method in methods(item) {
                self.served.push((path.clone(), method.to_owned()));
            }
        }
        self.router = self.router.routes(routes);
        self
    }

    pub(crate) fn merge(mut self, other: ApiRouter) -> ApiRouter {
        self.router = self.router.merge(other.router);
        self.served.extend(other.served);
        self
    }

    /// The axum router, the document of its routes, and its paths and
    /// methods.
    fn into_parts(self) -> (Router<Arc<AppState>>, OpenApi, Vec<(String, String)>) {
        let (router, doc) = self.router.split_for_parts();
        (router, doc, self.served)
    }
}

/// The operations of a path item, by method name (upper case).
fn operations(item: &PathItem) -> Vec<(&'static str, &Operation)> {
    [
        ("GET", &item.get),
        ("PUT", &item.put),
        ("POST", &item.post),
        ("DELETE", &item.delete),
        ("OPTIONS", &item.options),
        ("HEAD", &item.head),
        ("PATCH", &item.patch),
        ("TRACE", &item.trace),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_ref().map(|op| (m, op)))
    .collect()
}

fn methods(item: &PathItem) -> Vec<&'static str> {
    operations(item).into_iter().map(|(m, _)| m).collect()
}

fn operations_mut(item: &mut PathItem) -> Vec<(&'static str, &mut Operation)> {
    [
        ("get", &mut item.get),
        ("put", &mut item.put),
        ("post", &mut item.post),
        ("delete", &mut item.delete),
        ("options", &mut item.options),
        ("head", &mut item.head),
        ("patch", &mut item.patch),
        ("trace", &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_mut().map(|op| (m, op)))
    .collect()
}

/// The routes that take an API key or access token (the caller acts for
/// its team).
fn keyed() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(sandboxes::create, sandboxes::list_v1))
        .routes(routes!(sandboxes::create_v2, sandboxes::list_v2))
        .routes(routes!(sandboxes::detail, sandboxes::kill))
        .routes(routes!(sandboxes::set_timeout))
        .routes(routes!(sandboxes::refresh))
        .routes(routes!(sandboxes::connect))
        .routes(routes!(sandboxes::connect_v2))
        .routes(routes!(sandboxes::pause))
        .routes(routes!(sandboxes::resume))
        .routes(routes!(sandboxes::metrics))
        .routes(routes!(sandboxes::many_metrics))
        .routes(routes!(sandboxes::logs_v1))
        .routes(routes!(sandboxes::logs_v2))
        .routes(routes!(sandboxes::set_network))
        .routes(routes!(sandboxes::snapshot))
        .routes(routes!(sandboxes::fork))
        .routes(routes!(snapshots::list))
        .routes(routes!(volumes::list, volumes::create))
        .routes(routes!(volumes::get, volumes::delete))
        .routes(routes!(templates::remove_e2b))
        .routes(routes!(templates::import, templates::list))
        .routes(routes!(templates::pull, templates::remove_pull))
        .routes(routes!(templates::remove))
        .routes(routes!(builds::build))
        .routes(routes!(pool::status))
        .routes(routes!(nodes::list))
        .routes(routes!(scrape::metrics))
        .routes(routes!(keys::create, keys::list))
        .routes(routes!(keys::revoke))
        .routes(routes!(keys::create_team, keys::list_teams))
        .routes(routes!(keys::e2b_teams))
        .routes(routes!(keys::e2b_list_keys, keys::e2b_create_key))
        .routes(routes!(keys::e2b_rename_key, keys::e2b_delete_key))
        .routes(routes!(keys::e2b_create_token))
        .routes(routes!(keys::e2b_delete_token))
        .merge(e2b_templates::routes())
        .merge(template_catalog::routes())
}

/// The routes that take no key: health, this document, and those with
/// credentials of their own (build file uploads, the volume content API,
/// the CLI login).
fn public() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(openapi_json))
        .merge(e2b_templates::upload_routes())
        .merge(volume_content::routes())
        .merge(cli_login::routes())
}

/// The routes that take a key and those that do not, as axum routers.
pub(crate) fn routers() -> (Router<Arc<AppState>>, Router<Arc<AppState>>) {
    let (keyed, _, _) = keyed().into_parts();
    let (public, _, _) = public().into_parts();
    (keyed, public)
}

/// Every path and method the API serves (`("/sandboxes", "POST")`, …), as
/// the router records them.
pub fn served_routes() -> Vec<(String, String)> {
    let mut served = keyed().into_parts().2;
    served.extend(public().into_parts().2);
    served.sort();
    served
}

/// The OpenAPI document of the API.
pub fn document() -> &'static OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(build_document)
}

fn build_document() -> OpenApi {
    let (_, keyed_doc, _) = keyed().into_parts();
    let (_, public_doc, _) = public().into_parts();
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Hutch")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Hutch's REST API: E2B's control-plane API (sandboxes, templates, \
                     snapshots, volumes, keys) and Hutch's own routes under /hutch/v1.",
                ))
                .build(),
        )
        .build();
    doc.merge(keyed_doc);
    doc.merge(public_doc);

    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "api_key",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-API-Key",
            "An API key (e2b_…).",
        ))),
    );
    let mut access = Http::new(HttpAuthScheme::Bearer);
    access.description = Some("An E2B access token (sk_e2b_…) or API key.".to_owned());
    components.add_security_scheme("access_token", SecurityScheme::Http(access));
    let mut volume = Http::new(HttpAuthScheme::Bearer);
    volume.description =
        Some("A volume's token, from POST /volumes or GET /volumes/{id}.".to_owned());
    components.add_security_scheme("volume_token", SecurityScheme::Http(volume));
    for (name, schema) in [
        ("Error", <Error as PartialSchema>::schema()),
        ("VolumeContentError", VolumeContentError::schema()),
    ] {
        components.schemas.insert(name.to_owned(), schema);
    }
    doc.security = Some(vec![
        SecurityRequirement::new("api_key", Vec::<String>::new()),
        SecurityRequirement::new("access_token", Vec::<String>::new()),
    ]);

    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in operations_mut(item) {
            op.operation_id = Some(operation_id(method, path));
            let keyed = op.security.is_none();
            if keyed && !op.responses.responses.contains_key("401") {
                op.responses
                    .responses
                    .insert("401".to_owned(), error_response("No valid key."));
            }
            if !op.responses.responses.contains_key("default") {
                op.responses
                    .responses
                    .insert("default".to_owned(), error_response("An error."));
            }
        }
    }
    doc
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("Error"))),
        )
        .into()
}

/// `post` and `/v2/sandboxes/{id}/connect` → `postV2SandboxesIdConnect`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_owned();
    for word in path.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(chars);
        }
    }
    id
}

/// `GET /health`: whether the server answers.
#[utoipa::path(
    get,
    path = "/health",
    tag = "hutch",
    security(()),
    responses((status = 200, description = "The server answers.", body = Health))
)]
pub(crate) async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".to_owned(),
    })
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "hutch",
    security(()),
    responses((status = 200, description = "The OpenAPI document of this API.", body = Object))
)]
pub(crate) async fn openapi_json() -> axum::Json<&'static OpenApi> {
    axum::Json(document())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn operation_ids_come_from_method_and_path() {
        assert_eq!(
            operation_id("post", "/v2/sandboxes/{id}/connect"),
            "postV2SandboxesIdConnect"
        );
        assert_eq!(
            operation_id("delete", "/hutch/v1/api-keys/{id}"),
            "deleteHutchV1ApiKeysId"
        );
        assert_eq!(operation_id("get", "/openapi.json"), "getOpenapiJson");
    }

    #[test]
    fn every_operation_has_a_unique_id_and_an_error_answer() {
        let doc = document();
        let mut ids = BTreeMap::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in operations(item) {
                let id = op.operation_id.clone().unwrap();
                assert!(
                    ids.insert(id.clone(), (method, path)).is_none(),
                    "{id} twice"
                );
                assert!(op.responses.responses.contains_key("default"), "{id}");
            }
        }
        assert!(ids.len() >= 70, "{} operations", ids.len());
    }
}
