"""The contract between loqi and its plugins: the hook specifications, the spec classes plugins register, the
registries and the plugin manager that fills them. Imports only ``errors``, ``util`` and (for types) ``data`` and
``degrade``'s base classes; plugins reach it through the front door, ``loqi_core.plugin``."""
