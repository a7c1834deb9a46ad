//! (filled in by the hostile-client work)
