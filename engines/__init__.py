__all__: list[str] = ["backends", "bundle", "cards", "compat", "errors", "files", "manifest", "registry", "signing"]
