//! SQLite behind the store's SQL interface ([`crate::store::sql`]). Every statement goes
//! through the connection's statement cache: the hot paths (a creation, an update) run
//! the same few statements for every tunnel, and parsing them each time was most of what
//! a creation cost.
use rusqlite::{
    types::{ToSqlOutput, ValueRef},
    Connection, ToSql,
};

use crate::store::{
    sql::{Row, Sql, Value},
    Result, StoreError,
};

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(n) => ToSqlOutput::Borrowed(ValueRef::Integer(*n)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

struct SqliteRow<'a, 'b>(&'a rusqlite::Row<'b>);

impl Row for SqliteRow<'_, '_> {
    fn value(&self, i: usize) -> Result<Value> {
        Ok(match self.0.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(n) => Value::Int(n),
            ValueRef::Text(t) => {
                Value::Text(
                    String::from_utf8(t.to_vec()).map_err(|_| StoreError::Corrupt {
                        what: format!("column {i} is not UTF-8"),
                    })?,
                )
            }
            other => {
                return Err(StoreError::Corrupt {
                    what: format!("column {i} holds a {:?}", other.data_type()),
                })
            }
        })
    }
}

impl Sql for Connection {
    fn exec(&self, sql: &str, params: &[Value]) -> Result<usize> {
        Ok(self
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))?)
    }

    fn each_row(
        &self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&dyn Row) -> Result<()>,
    ) -> Result<()> {
        let mut st = self.prepare_cached(sql)?;
        let mut rows = st.query(rusqlite::params_from_iter(params))?;
        while let Some(r) = rows.next()? {
            each(&SqliteRow(r))?;
        }
        Ok(())
    }
}
