//! Workload samplers shared by depot benchmarks.
