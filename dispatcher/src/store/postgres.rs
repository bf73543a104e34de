//! A PostgreSQL connection the store calls synchronously, like its SQLite one: tokio-postgres,
//! with the connection driven by a thread of its own, so a call blocks only its caller (inside
//! the dispatcher's runtime through `off_runtime`, or in a plain thread) and never needs to be
//! inside or outside a runtime.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};

use super::StoreError;
use super::sql::{Kind, Row, Value, postgres_placeholders};

/// How long connecting may take before the store gives up (unless the URL says otherwise).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct PgConnection {
    client: Client,
    /// Every statement is prepared once per connection, as SQLite's `prepare_cached` does.
    statements: RefCell<HashMap<String, Statement>>,
    shown_url: String,
}

impl PgConnection {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/database[?options]`).
    pub(crate) fn connect(url: &str) -> Result<PgConnection, StoreError> {
        let shown_url = shown_url(url);
        // Unreachable is transient: a dispatcher waits for its database to come back.
        let open_failed = |reason: String| StoreError::Unavailable {
            url: shown_url.clone(),
            operation: "connect",
            reason,
        };
        let mut config: tokio_postgres::Config =
            url.parse()
                .map_err(|err: tokio_postgres::Error| StoreError::Open {
                    path: shown_url.clone().into(),
                    reason: reason(&err),
                })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("pipelines-dispatcher");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("postgres-connection".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = sender.send(Err(err.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match config.connect(NoTls).await {
                        Ok((client, connection)) => {
                            let _ = sender.send(Ok(client));
                            // Ends when the client is dropped or the server goes; calls on a
                            // client whose connection ended fail, naming why.
                            let _ = connection.await;
                        }
                        Err(err) => {
                            let _ = sender.send(Err(reason(&err)));
                        }
                    }
                });
            })
            .map_err(|err| open_failed(err.to_string()))?;
        let client = receiver
            .recv()
            .map_err(|_| open_failed("the connection thread ended".into()))?
            .map_err(open_failed)?;
        Ok(PgConnection {
            client,
            statements: RefCell::new(HashMap::new()),
            shown_url,
        })
    }

    /// The URL without its password, for messages.
    pub(crate) fn shown_url(&self) -> &str {
        &self.shown_url
    }

    fn statement(&self, operation: &'static str, sql: &str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = block_on(self.client.prepare(&postgres_placeholders(sql)))
            .map_err(|err| self.failed(operation, &err))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    pub(crate) fn execute(
        &self,
        operation: &'static str,
        sql: &str,
        params: &[Value],
    ) -> Result<u64, StoreError> {
        let statement = self.statement(operation, sql)?;
        bound(params, |params| {
            block_on(self.client.execute(&statement, params))
        })
        .map_err(|err| self.failed(operation, &err))
    }

    pub(crate) fn query(
        &self,
        operation: &'static str,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(operation, sql)?;
        let rows = bound(params, |params| {
            block_on(self.client.query(&statement, params))
        })
        .map_err(|err| self.failed(operation, &err))?;
        rows.iter()
            .map(|row| read_row(row).map_err(|err| self.failed(operation, &err)))
            .collect()
    }

    pub(crate) fn batch(&self, operation: &'static str, sql: &str) -> Result<(), StoreError> {
        block_on(self.client.batch_execute(sql)).map_err(|err| self.failed(operation, &err))
    }
}

fn read_row(row: &tokio_postgres::Row) -> Result<Row, tokio_postgres::Error> {
    let mut values = Vec::with_capacity(row.len());
    for (index, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(index)?
                .map_or(Value::Null(Kind::Int), Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(index)?
                .map_or(Value::Null(Kind::Int), |n| Value::Int(n.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(index)?
                .map_or(Value::Null(Kind::Int), |n| Value::Int(n.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(index)?
                .map_or(Value::Null(Kind::Int), |b| Value::Int(b.into()))
        } else if *ty == Type::VOID {
            Value::Null(Kind::Int)
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(index)?
                .map_or(Value::Null(Kind::Bytes), Value::Bytes)
        } else {
            // TEXT, VARCHAR, NAME; anything else fails here with the column's type.
            row.try_get::<_, Option<String>>(index)?
                .map_or(Value::Null(Kind::Text), Value::Text)
        };
        values.push(value);
    }
    Ok(Row(values))
}

/// Calls `call` with `params` as tokio-postgres takes them.
fn bound<T>(params: &[Value], call: impl FnOnce(&[&(dyn ToSql + Sync)]) -> T) -> T {
    let params: Vec<Param<'_>> = params.iter().map(Param).collect();
    let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
    call(&params)
}

/// A [`Value`] bound to whatever type PostgreSQL inferred for its placeholder.
#[derive(Debug)]
struct Param<'a>(&'a Value);

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Value::Null(_) => Ok(IsNull::Yes),
            Value::Int(n) => {
                if *ty == Type::INT8 {
                    n.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(*n)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(*n)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (*n != 0).to_sql(ty, out)
                } else {
                    Err(format!("an integer given for a parameter of type {ty}").into())
                }
            }
            Value::Text(text) => text.as_str().to_sql(ty, out),
            Value::Bytes(bytes) => bytes.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl PgConnection {
    /// What an error means for the caller: a lost connection or a server going down is
    /// [`StoreError::Unavailable`] (connect again); anything else is a failed statement.
    fn failed(&self, operation: &'static str, err: &tokio_postgres::Error) -> StoreError {
        let lost = self.client.is_closed()
            || err.is_closed()
            || err.code().is_some_and(|code| {
                let code = code.code();
                // Class 08: connection exceptions; 57P01-03: the server shuts down or starts.
                code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
            });
        if lost {
            StoreError::Unavailable {
                url: self.shown_url.clone(),
                operation,
                reason: reason(err),
            }
        } else {
            StoreError::Database {
                operation,
                reason: reason(err),
            }
        }
    }
}

/// The server's own message when there is one (tokio-postgres's `Display` says only "db
/// error"), else the error and its cause.
fn reason(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut reason = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            reason.push_str(": ");
            reason.push_str(detail);
        }
        return reason;
    }
    match std::error::Error::source(err) {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    }
}

/// `url` with its password replaced, for logs and errors.
pub(crate) fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_owned(),
    }
}

/// Polls `future` on this thread until it is ready. The connection's thread does the I/O; the
/// client's futures only wait on channels from it, so they need no runtime here.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::shown_url;

    #[test]
    fn a_shown_url_has_no_password() {
        assert_eq!(
            shown_url("postgres://pipelines:s3cret@db:5432/runs?sslmode=disable"),
            "postgres://pipelines@db:5432/runs?sslmode=disable"
        );
        assert_eq!(
            shown_url("postgres://127.0.0.1/test"),
            "postgres://127.0.0.1/test"
        );
    }
}
