//! Load tools and benchmarks; see RESULTS.md.
