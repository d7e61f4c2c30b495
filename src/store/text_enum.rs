//! Enums stored as text. Each variant is one fixed string, the same in the database, in
//! JSON and in the OpenAPI document; text read back that is not one of them is an error
//! (`sqlx::Error::ColumnDecode`, or serde's), never a guess.

/// An enum kept in a text column: [`text_enum!`](crate::text_enum) binds it to both
/// backends as such.
pub trait TextEnum: Sized + Copy + 'static {
    /// Every variant, so that parsing is the inverse of [`TextEnum::as_str`] by construction.
    const ALL: &'static [Self];
    /// Where the value is stored, for the error that names an unknown one.
    const COLUMN: &'static str;

    fn as_str(self) -> &'static str;

    fn parse(raw: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.as_str() == raw)
    }
}

/// Bind a [`TextEnum`] to every sqlx backend as text, to serde as a string and to the
/// OpenAPI document as a string enum: it encodes as its string and decodes only from one of
/// its strings.
#[macro_export]
macro_rules! text_enum {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($crate::store::TextEnum::as_str(*self))
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                <$ty as $crate::store::TextEnum>::parse(&raw).ok_or_else(|| {
                    let expected: Vec<&str> = <$ty as $crate::store::TextEnum>::ALL
                        .iter()
                        .map(|v| $crate::store::TextEnum::as_str(*v))
                        .collect();
                    // serde's own wording, which the API's error mapping recognises.
                    serde::de::Error::custom(format!(
                        "unknown variant `{raw}`, expected one of {}",
                        expected.join(", ")
                    ))
                })
            }
        }

        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some(
                        <$ty as $crate::store::TextEnum>::ALL
                            .iter()
                            .map(|v| $crate::store::TextEnum::as_str(*v)),
                    ))
                    .into()
            }
        }

        impl utoipa::ToSchema for $ty {}

        impl<DB: sqlx::Database> sqlx::Type<DB> for $ty
        where
            str: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as sqlx::Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $ty
        where
            &'static str: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&'static str as sqlx::Encode<'q, DB>>::encode(
                    $crate::store::TextEnum::as_str(*self),
                    buf,
                )
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $ty
        where
            &'r str: sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let raw = <&'r str as sqlx::Decode<'r, DB>>::decode(value)?;
                <$ty as $crate::store::TextEnum>::parse(raw).ok_or_else(|| {
                    format!(
                        "{} holds {raw:?}, which this release does not write",
                        <$ty as $crate::store::TextEnum>::COLUMN
                    )
                    .into()
                })
            }
        }
    };
}
