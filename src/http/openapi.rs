//! The OpenAPI document's frame: what the handler annotations do not say themselves. The
//! security scheme, the shape of a Clerk event (the webhook's body), every limit of a path
//! or query parameter as a schema keyword, and a description for every response that has
//! none (OpenAPI requires one), from one table by status.

use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::ToSchema;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "clerk-sync",
        description = "Clerk webhooks provisioned exactly once, and the credits API."
    ),
    components(schemas(ClerkEvent, ClerkUserData, ClerkEmailAddress))
)]
pub struct ApiDoc;

/// A Clerk webhook event, as Svix delivers it (the fields clerk-sync reads; Clerk sends
/// more, which are kept in the stored payload).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ClerkEvent {
    /// `user.created`, `user.updated`, `user.deleted`; another type is recorded as ignored.
    #[schema(example = "user.created")]
    r#type: String,
    /// Always `event`.
    object: String,
    data: ClerkUserData,
    /// Unix milliseconds.
    timestamp: Option<i64>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ClerkUserData {
    /// The Clerk user id.
    #[schema(
        pattern = "^[A-Za-z0-9_]{1,128}$",
        example = "user_29w83sxmDNGwOuEthce5gg56FcC"
    )]
    id: String,
    email_addresses: Option<Vec<ClerkEmailAddress>>,
    primary_email_address_id: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    image_url: Option<String>,
    /// Unix milliseconds.
    created_at: Option<i64>,
    /// Unix milliseconds; an event older than the one applied changes nothing.
    updated_at: Option<i64>,
    /// `true` on `user.deleted`.
    deleted: Option<bool>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ClerkEmailAddress {
    id: String,
    email_address: String,
}

/// What a status means when an annotation did not say.
fn description(status: &str) -> &'static str {
    match status {
        "200" => "OK",
        "400" => "The request is invalid: `message` names the field or parameter and what is wrong",
        "401" => "No valid credentials (`Authorization: Bearer <key>`, or the Svix signature)",
        "402" => "Not enough credits; `balance` holds the current balance",
        "404" => "No such user (or path)",
        "405" => "The path does not take this method",
        "408" => "The body did not arrive in time",
        "409" => "The idempotency key was used for a different request",
        "413" => "The body is larger than the limit",
        "415" => "The body is not `application/json`",
        "422" => "The change cannot be applied (a limit would be passed, or the user cannot be provisioned)",
        "500" => "The database refused the write; retried deliveries go through once it is fixed",
        "503" => "The database (or Clerk) is unavailable; retry",
        _ => "See `error` and `message`",
    }
}

fn string_schema(pattern: &str, min: usize, max: usize) -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .pattern(Some(pattern))
            .min_length(Some(min))
            .max_length(Some(max))
            .build(),
    )
}

/// The schema of a path or query parameter, by name.
fn parameter_schema(p: &Parameter) -> Option<Schema> {
    match (&p.parameter_in, p.name.as_str()) {
        (ParameterIn::Path, "clerk_id") => Some(string_schema("^[A-Za-z0-9_]+$", 1, 128)),
        (ParameterIn::Query, "limit") => Some(Schema::Object(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::Integer))
                .minimum(Some(1))
                .maximum(Some(200))
                .default(Some(50.into()))
                .build(),
        )),
        (ParameterIn::Query, "cursor") => {
            Some(string_schema("^[0-9]{1,15}\\.[A-Za-z0-9_]{1,64}$", 3, 80))
        }
        (ParameterIn::Header, "svix-id") => Some(string_schema("^[!-~]+$", 1, 256)),
        (ParameterIn::Header, "svix-timestamp") => Some(string_schema("^[0-9]{1,12}$", 1, 12)),
        (ParameterIn::Header, "svix-signature") => Some(string_schema(
            "^v1,[A-Za-z0-9+/=]+( v1,[A-Za-z0-9+/=]+)*$",
            4,
            4096,
        )),
        _ => None,
    }
}

/// Finish the document once every route is in it.
pub fn complete(openapi: &mut OpenApi) {
    {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "api_key",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for (status, response) in operation.responses.responses.iter_mut() {
                    if let RefOr::T(response) = response {
                        if response.description.is_empty() {
                            response.description = description(status).to_owned();
                        }
                    }
                }
                for p in operation.parameters.iter_mut().flatten() {
                    if let RefOr::T(p) = p {
                        if let Some(schema) = parameter_schema(p) {
                            p.schema = Some(RefOr::T(schema));
                        }
                    }
                }
            }
        }
    }
}
