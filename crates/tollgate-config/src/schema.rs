//! JSON Schemas of the resource types, for the admin API's OpenAPI
//! document: derived from the serde types themselves (`schemars` reads their
//! serde attributes), with the hand-written text forms below.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use crate::model::Balance;
use crate::policy::LimitKey;
use crate::resources::Kind;
use crate::secret::Secret;
use crate::units::{Duration, Size, Timestamp};

macro_rules! text_schema {
    ($type:ty, $name:literal, $description:literal) => {
        impl JsonSchema for $type {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "description": $description })
            }
        }
    };
}

text_schema!(Duration, "Duration", "a duration: 500ms, 30s, 5m, 2h, 30d");
text_schema!(Size, "Size", "a size in bytes: 512, 64KiB, 10MiB, 1GiB");
text_schema!(
    Secret,
    "Secret",
    "`env:NAME` (read from the environment at load time) or a literal value; literals are shown as <redacted>"
);
text_schema!(
    Timestamp,
    "Timestamp",
    "an RFC 3339 date-time (2027-05-01T12:00:00Z) or a date (2027-05-01, its midnight UTC)"
);
text_schema!(
    Balance,
    "Balance",
    "round_robin | least_conn | hash(header:NAME) | hash(ip)"
);
text_schema!(LimitKey, "LimitKey", "consumer | ip | api | header:NAME");

/// The JSON Schema of one resource kind's body, its definitions inline.
pub fn resource_schema(kind: Kind) -> serde_json::Value {
    let schema = match kind {
        Kind::Teams => schemars::schema_for!(crate::Team),
        Kind::IdentityProviders => schemars::schema_for!(crate::IdentityProvider),
        Kind::Consumers => schemars::schema_for!(crate::Consumer),
        Kind::Services => schemars::schema_for!(crate::Service),
        Kind::Apis => schemars::schema_for!(crate::Api),
        Kind::Subscriptions => schemars::schema_for!(crate::Subscription),
        Kind::Blocks => schemars::schema_for!(crate::Block),
        Kind::AiProviders => schemars::schema_for!(crate::AiProvider),
        Kind::AiModels => schemars::schema_for!(crate::AiModel),
        Kind::AiPrices => schemars::schema_for!(crate::AiPrice),
    };
    schema.to_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_an_object_schema_naming_its_key_field() {
        for kind in Kind::ALL {
            let schema = resource_schema(kind);
            assert_eq!(schema["type"], "object", "{kind}: {schema}");
            // A price is named after two of its fields.
            let fields: Vec<&str> = kind.key_field().split(':').collect();
            for field in fields {
                assert!(schema["properties"][field].is_object(), "{kind}: {schema}");
            }
        }
        let api = resource_schema(Kind::Apis);
        assert!(api["properties"]["match"].is_object(), "{api}");
        let service = resource_schema(Kind::Services);
        assert!(service.to_string().contains("round_robin"), "{service}");
    }
}
