//! PostgreSQL behind the store's SQL interface ([`crate::store::sql`]): statements
//! renumbered for it ([`numbered`]) and prepared once per connection, values in
//! PostgreSQL's types (BIGINT, TEXT).
use std::{cell::RefCell, collections::HashMap, error::Error};

use postgres::{
    types::{to_sql_checked, IsNull, ToSql, Type},
    Statement, Transaction,
};

use crate::store::{
    sql::{numbered, Row, Sql, Value},
    Result, StoreError,
};

type BoxError = Box<dyn Error + Sync + Send>;

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) => match *ty {
                Type::INT8 => n.to_sql(ty, out),
                Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
                _ => Err(format!("an integer where PostgreSQL wants {ty}").into()),
            },
            Value::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT8 | Type::INT4 | Type::INT2 | Type::TEXT | Type::VARCHAR | Type::BPCHAR
        )
    }

    to_sql_checked!();
}

/// Statements prepared on one connection, by their text as written for the store.
#[derive(Default)]
pub(super) struct Prepared(HashMap<String, (Statement, Vec<usize>)>);

/// At most this many statements stay prepared (filtered listings build their text, so the
/// set is open): beyond it the cache starts again, and dropped statements are closed on
/// the server.
pub(super) const PREPARED_MAX: usize = 256;

impl Prepared {
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// A transaction as the store's logic sees it.
pub(super) struct PgSql<'a, 'c> {
    pub tx: RefCell<&'a mut Transaction<'c>>,
    pub prepared: &'a RefCell<Prepared>,
}

impl PgSql<'_, '_> {
    /// The prepared statement for `sql` and its parameters in its order.
    fn statement<'p>(
        &self,
        sql: &str,
        params: &'p [Value],
    ) -> Result<(Statement, Vec<&'p (dyn ToSql + Sync)>)> {
        let mut prepared = self.prepared.borrow_mut();
        if prepared.0.len() >= PREPARED_MAX && !prepared.0.contains_key(sql) {
            prepared.0.clear();
        }
        if !prepared.0.contains_key(sql) {
            let (text, order) = numbered(sql);
            let st = self.tx.borrow_mut().prepare(&text)?;
            prepared.0.insert(sql.to_string(), (st, order));
        }
        let (st, order) = &prepared.0[sql];
        let args = order
            .iter()
            .map(|&i| {
                params
                    .get(i)
                    .map(|v| v as &(dyn ToSql + Sync))
                    .ok_or_else(|| StoreError::Invalid {
                        what: format!("statement {sql:?} has no parameter {}", i + 1),
                    })
            })
            .collect::<Result<_>>()?;
        Ok((st.clone(), args))
    }
}

struct PgRow(postgres::Row);

impl Row for PgRow {
    fn value(&self, i: usize) -> Result<Value> {
        let ty = self
            .0
            .columns()
            .get(i)
            .ok_or_else(|| StoreError::Corrupt {
                what: format!("no column {i}"),
            })?
            .type_()
            .clone();
        let v = match ty {
            Type::INT8 => self.0.try_get::<_, Option<i64>>(i)?.map(Value::Int),
            Type::INT4 => self
                .0
                .try_get::<_, Option<i32>>(i)?
                .map(|n| Value::Int(n.into())),
            Type::INT2 => self
                .0
                .try_get::<_, Option<i16>>(i)?
                .map(|n| Value::Int(n.into())),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                self.0.try_get::<_, Option<String>>(i)?.map(Value::Text)
            }
            other => {
                return Err(StoreError::Corrupt {
                    what: format!("column {i} is of type {other}"),
                })
            }
        };
        Ok(v.unwrap_or(Value::Null))
    }
}

impl Sql for PgSql<'_, '_> {
    fn exec(&self, sql: &str, params: &[Value]) -> Result<usize> {
        let (st, args) = self.statement(sql, params)?;
        let n = self.tx.borrow_mut().execute(&st, &args)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn each_row(
        &self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&dyn Row) -> Result<()>,
    ) -> Result<()> {
        let (st, args) = self.statement(sql, params)?;
        let rows = self.tx.borrow_mut().query(&st, &args)?;
        for r in rows {
            each(&PgRow(r))?;
        }
        Ok(())
    }
}
