__all__: list[str] = ["backends", "bundle", "compat", "errors", "manifest", "registry", "signing"]
