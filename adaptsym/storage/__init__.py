"""Results on disk and in MLflow: the run's zarr store (`store`), its integrity check (`verify`),
one writer per run (`runlock`), MLflow tracking (`tracking`) and provenance (versions, git, device).
Depends only on the package's foundations (`config`, `errors`, `util`)."""
