//! The Lambda custom runtime's `bootstrap`: serves SQL over HTTP invocations until the
//! runtime stops it.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(lambda_runtime::service_fn(omendb_sql_lambda::handler)).await
}
