//! Answers that many routes share, for their OpenAPI documents (`responses(...)` of
//! `#[utoipa::path]`), so that each is described once.

use berth_api::{Nothing, Response};

/// What any request may be refused with: a bad field or value, an untrusted client.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its description is used
pub(crate) enum Refused {
    #[response(
        status = 400,
        description = "A field or value is wrong (the error names it)"
    )]
    Invalid(Response<Nothing>),
    #[response(status = 403, description = "The client is not trusted")]
    Forbidden(Response<Nothing>),
}

/// A request that names an instance that does not exist.
#[derive(utoipa::IntoResponses)]
#[response(status = 404, description = "No such instance")]
#[allow(dead_code)]
pub(crate) struct NoInstance(Response<Nothing>);

/// A change that was read and checked and now runs as an operation.
#[derive(utoipa::IntoResponses)]
#[response(status = 202, description = "Begun: the operation follows it")]
#[allow(dead_code)]
pub(crate) struct Begun(Response<Nothing>);

/// A websocket's upgrade.
#[derive(utoipa::IntoResponses)]
#[response(status = 101, description = "Switching to the websocket")]
pub(crate) struct Upgraded;
