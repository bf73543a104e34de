//! The few calls the run database makes of its engine (run a statement, read rows, a
//! transaction), over SQLite or PostgreSQL, so that the store's queries are written once.
//!
//! Statements are written in the dialect both engines share: `?N` placeholders (rewritten to
//! `$N` for PostgreSQL), `ON CONFLICT … DO UPDATE`, integers as 64-bit, booleans as 0 and 1.
//! Values cross as [`Value`]s, typed even when null, because PostgreSQL checks a parameter's
//! type against its column where SQLite takes anything.

use rusqlite::types::ValueRef;

use super::StoreError;
use super::postgres::PgConnection;

/// The type of a value, kept for nulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int,
    Text,
    Bytes,
}

/// One parameter or one column of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null(Kind),
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// What a statement can take as a parameter.
pub(crate) trait ToValue {
    const KIND: Kind;
    fn to_value(&self) -> Value;
}

impl ToValue for i64 {
    const KIND: Kind = Kind::Int;
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}

impl ToValue for i32 {
    const KIND: Kind = Kind::Int;
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for u32 {
    const KIND: Kind = Kind::Int;
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for bool {
    const KIND: Kind = Kind::Int;
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for str {
    const KIND: Kind = Kind::Text;
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl ToValue for String {
    const KIND: Kind = Kind::Text;
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl ToValue for Vec<u8> {
    const KIND: Kind = Kind::Bytes;
    fn to_value(&self) -> Value {
        Value::Bytes(self.clone())
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    const KIND: Kind = T::KIND;
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    const KIND: Kind = T::KIND;
    fn to_value(&self) -> Value {
        match self {
            Some(value) => value.to_value(),
            None => Value::Null(T::KIND),
        }
    }
}

/// The parameters of a statement: `values![run_id, seq, …]`.
macro_rules! values {
    ($($value:expr),* $(,)?) => {
        &[$($crate::store::sql::ToValue::to_value(&$value)),*][..]
    };
}
pub(crate) use values;

/// What a column can be read as.
pub(crate) trait FromValue: Sized {
    fn from_value(value: Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Int(n) => Some(n),
            _ => None,
        }
    }
}

impl FromValue for i32 {
    fn from_value(value: Value) -> Option<Self> {
        i64::from_value(value).and_then(|n| i32::try_from(n).ok())
    }
}

impl FromValue for u32 {
    fn from_value(value: Value) -> Option<Self> {
        i64::from_value(value).and_then(|n| u32::try_from(n).ok())
    }
}

impl FromValue for bool {
    fn from_value(value: Value) -> Option<Self> {
        i64::from_value(value).map(|n| n != 0)
    }
}

impl FromValue for String {
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Bytes(bytes) => Some(bytes),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Null(_) => Some(None),
            value => T::from_value(value).map(Some),
        }
    }
}

/// One row read, every column already out of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row(pub(crate) Vec<Value>);

impl Row {
    /// Column `index` as `T`; a column of another type is a corrupt database.
    pub(crate) fn get<T: FromValue>(&self, index: usize) -> Result<T, StoreError> {
        let value = self.0.get(index).cloned().unwrap_or(Value::Null(Kind::Int));
        // Described only when it is wrong: a run's status snapshot is a column of hundreds of
        // kilobytes, and formatting it on every read was ~3% of the dispatcher's time.
        T::from_value(value).ok_or_else(|| StoreError::Corrupt {
            what: "column",
            value: format!("{} in column {index}", self.describe(index)),
        })
    }

    /// What column `index` holds, short enough for an error message.
    fn describe(&self, index: usize) -> String {
        match self.0.get(index) {
            None => "no value".to_owned(),
            Some(Value::Bytes(bytes)) => format!("Bytes({} bytes)", bytes.len()),
            Some(Value::Text(text)) if text.len() > 200 => format!("Text({} bytes)", text.len()),
            Some(value) => format!("{value:?}"),
        }
    }
}

/// A connection to either engine.
pub(crate) enum Db {
    Sqlite(rusqlite::Connection),
    Postgres(PgConnection),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Db::Sqlite(_) => f.write_str("Db::Sqlite"),
            Db::Postgres(connection) => write!(f, "Db::Postgres({})", connection.shown_url()),
        }
    }
}

pub(crate) fn failed(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |err| StoreError::Database {
        operation,
        reason: err.to_string(),
    }
}

impl Db {
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// Runs one statement; how many rows it changed.
    pub(crate) fn execute(
        &self,
        operation: &'static str,
        sql: &str,
        params: &[Value],
    ) -> Result<u64, StoreError> {
        match self {
            Db::Sqlite(connection) => {
                let mut statement = connection.prepare_cached(sql).map_err(failed(operation))?;
                let changed = statement
                    .execute(rusqlite::params_from_iter(params.iter().map(sqlite_value)))
                    .map_err(failed(operation))?;
                Ok(changed as u64)
            }
            Db::Postgres(connection) => connection.execute(operation, sql, params),
        }
    }

    /// Every row a query returns.
    pub(crate) fn query(
        &self,
        operation: &'static str,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<Row>, StoreError> {
        match self {
            Db::Sqlite(connection) => {
                let mut statement = connection.prepare_cached(sql).map_err(failed(operation))?;
                let columns = statement.column_count();
                let mut rows = statement
                    .query(rusqlite::params_from_iter(params.iter().map(sqlite_value)))
                    .map_err(failed(operation))?;
                let mut read = Vec::new();
                while let Some(row) = rows.next().map_err(failed(operation))? {
                    let mut values = Vec::with_capacity(columns);
                    for index in 0..columns {
                        values.push(match row.get_ref(index).map_err(failed(operation))? {
                            ValueRef::Null => Value::Null(Kind::Int),
                            ValueRef::Integer(n) => Value::Int(n),
                            // No column holds a real; one that does was written by hand.
                            ValueRef::Real(x) => Value::Text(x.to_string()),
                            ValueRef::Text(text) => {
                                Value::Text(String::from_utf8_lossy(text).into_owned())
                            }
                            ValueRef::Blob(bytes) => Value::Bytes(bytes.to_vec()),
                        });
                    }
                    read.push(Row(values));
                }
                Ok(read)
            }
            Db::Postgres(connection) => connection.query(operation, sql, params),
        }
    }

    /// The first row a query returns, if any.
    pub(crate) fn query_row(
        &self,
        operation: &'static str,
        sql: &str,
        params: &[Value],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.query(operation, sql, params)?.into_iter().next())
    }

    /// Statements without parameters, separated by `;` (schema steps).
    pub(crate) fn batch(&self, operation: &'static str, sql: &str) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(connection) => connection.execute_batch(sql).map_err(failed(operation)),
            Db::Postgres(connection) => connection.batch(operation, sql),
        }
    }

    /// Runs `work` in one transaction: committed when it returns `Ok`, rolled back otherwise.
    /// `immediate`: SQLite takes the write lock at the start, not at the first write.
    pub(crate) fn transaction<T>(
        &self,
        immediate: bool,
        work: impl FnOnce(&Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let begin = if immediate && !self.is_postgres() {
            "BEGIN IMMEDIATE"
        } else {
            "BEGIN"
        };
        self.batch("begin", begin)?;
        match work(self) {
            Ok(value) => {
                self.batch("commit", "COMMIT")?;
                Ok(value)
            }
            Err(err) => {
                // The error is the one worth reporting; a failed rollback leaves the
                // connection in a state its owner replaces anyway.
                let _ = self.batch("rollback", "ROLLBACK");
                Err(err)
            }
        }
    }
}

fn sqlite_value(value: &Value) -> rusqlite::types::Value {
    match value {
        Value::Null(_) => rusqlite::types::Value::Null,
        Value::Int(n) => rusqlite::types::Value::Integer(*n),
        Value::Text(text) => rusqlite::types::Value::Text(text.clone()),
        Value::Bytes(bytes) => rusqlite::types::Value::Blob(bytes.clone()),
    }
}

/// `?N` placeholders as PostgreSQL's `$N`. The store's statements have no `?` inside quotes.
pub(crate) fn postgres_placeholders(sql: &str) -> String {
    sql.replace('?', "$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_keep_their_type_and_read_back_as_none() {
        let none: Option<i64> = None;
        let text: Option<&str> = None;
        assert_eq!(
            values![none, text, 3_u32, true, "x"],
            &[
                Value::Null(Kind::Int),
                Value::Null(Kind::Text),
                Value::Int(3),
                Value::Int(1),
                Value::Text("x".into())
            ]
        );
        let row = Row(vec![Value::Null(Kind::Text), Value::Int(7)]);
        assert_eq!(row.get::<Option<String>>(0).unwrap(), None);
        assert_eq!(row.get::<u32>(1).unwrap(), 7);
        let wrong = row.get::<String>(1).unwrap_err().to_string();
        assert!(wrong.contains("column 1"), "{wrong}");
    }

    #[test]
    fn a_column_of_the_wrong_type_is_named_with_its_kind_and_size_not_its_contents() {
        let body = vec![7_u8; 300_000];
        let row = Row(vec![
            Value::Bytes(body.clone()),
            Value::Text("t".repeat(5_000)),
        ]);
        assert_eq!(row.get::<Vec<u8>>(0).unwrap(), body);
        let bytes = row.get::<i64>(0).unwrap_err().to_string();
        assert!(bytes.contains("Bytes(300000 bytes) in column 0"), "{bytes}");
        let text = row.get::<i64>(1).unwrap_err().to_string();
        assert!(text.contains("Text(5000 bytes) in column 1"), "{text}");
        assert!(text.len() < 200, "the message quotes the column: {text}");
        let missing = row.get::<i64>(2).unwrap_err().to_string();
        assert!(missing.contains("column 2"), "{missing}");
    }

    #[test]
    fn placeholders_become_dollars_for_postgres() {
        assert_eq!(
            postgres_placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = $12"
        );
    }
}
