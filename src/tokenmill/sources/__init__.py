"""Stage 01: readers that turn raw input into documents tagged with their domain."""
