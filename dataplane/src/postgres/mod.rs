//! PostgreSQL protocol: sans-IO codec, session state machine, upstream authentication.
