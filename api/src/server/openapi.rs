//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers' annotations and
//! the DTOs' schemas, so it cannot drift from the code.

use super::{admin, dto::*, handlers};
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "depot",
        description = "depot's HTTP API v1: inventory, allocation rules, reservations, events. \
                       Errors are `{\"error\": {\"code\", \"message\", \"details\"}}`.",
    ),
    paths(
        admin::create_tenant,
        admin::create_key,
        admin::revoke_key,
        handlers::put_location,
        handlers::put_channel,
        handlers::put_bundle,
        handlers::put_rules,
        admin::get_rules,
        handlers::adjust,
        handlers::get_stock,
        handlers::explain,
        admin::exposure,
        handlers::reserve,
        handlers::get_reservation,
        handlers::commit,
        handlers::release,
        handlers::cancel,
        handlers::extend,
        handlers::fulfil,
        handlers::return_units,
        handlers::batch,
        admin::events,
        admin::event_stream,
        admin::healthz,
        admin::readyz,
        admin::metrics,
        serve_document,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "this document", content_type = "application/json")))]
pub async fn serve_document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
