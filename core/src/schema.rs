//! OpenAPI schemas of the value types the API shows as strings.

use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::{BusinessDate, EntryId, MerchantId, Money};

fn string(description: &str, example: &str) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).description(Some(description)).examples([example])
}

impl PartialSchema for Money {
    fn schema() -> RefOr<Schema> {
        string("An amount: a decimal string with two places, never a number.", "150.25")
            .pattern(Some(r"^-?[0-9]{1,16}\.[0-9]{2}$"))
            .into()
    }
}
impl ToSchema for Money {}

impl PartialSchema for BusinessDate {
    fn schema() -> RefOr<Schema> {
        string("A business date.", "2026-11-29").format(Some(SchemaFormat::KnownFormat(KnownFormat::Date))).into()
    }
}
impl ToSchema for BusinessDate {}

impl PartialSchema for MerchantId {
    fn schema() -> RefOr<Schema> {
        string("A merchant id.", "loja-1").pattern(Some(r"^[A-Za-z0-9_.-]{1,64}$")).into()
    }
}
impl ToSchema for MerchantId {}

impl PartialSchema for EntryId {
    fn schema() -> RefOr<Schema> {
        string("An entry id.", "0b7e5a4e-8f7b-4c55-9a55-2d7f0c1f4d3e")
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
            .into()
    }
}
impl ToSchema for EntryId {}
