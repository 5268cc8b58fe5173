"""Config validation before anything heavy is imported: typed schemas, `_target_` arguments, cross-key checks."""
