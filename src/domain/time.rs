//! Times in the API: stored as UTC without an offset (Prisma's `timestamp(3)`), written
//! as RFC 3339 with `Z`, as the OpenAPI document's `date-time` says.

use chrono::NaiveDateTime;

/// `serialize_with` for a UTC [`NaiveDateTime`]: `2026-11-30T02:26:25.409Z`.
pub fn rfc3339_utc<S: serde::Serializer>(t: &NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&rfc3339_millis(*t))
}

/// A UTC [`NaiveDateTime`] as the API writes it: `2026-11-30T02:26:25.409Z`.
pub fn rfc3339_millis(t: NaiveDateTime) -> String {
    t.and_utc().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn written_with_milliseconds_and_z() {
        #[derive(serde::Serialize)]
        struct T(#[serde(serialize_with = "super::rfc3339_utc")] chrono::NaiveDateTime);
        let t = chrono::NaiveDate::from_ymd_opt(2026, 11, 30)
            .unwrap()
            .and_hms_milli_opt(2, 26, 25, 409)
            .unwrap();
        let text = serde_json::to_string(&T(t)).unwrap();
        assert_eq!(text, "\"2026-11-30T02:26:25.409Z\"");
        assert!(chrono::DateTime::parse_from_rfc3339(text.trim_matches('"')).is_ok());
    }
}
