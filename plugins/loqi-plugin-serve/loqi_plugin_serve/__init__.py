"""loqi plugin serve: ``loqi index build|info`` and ``loqi serve``, added through the commands hook.

Keep this module free of heavy imports (torch, faiss, starlette): it is loaded by every ``loqi`` call.
"""

from loqi_core.plugin import hookimpl


@hookimpl
def loqi_register_commands(cli):
    from loqi_plugin_serve.cli import index_group, serve_command

    cli.add_command(index_group)
    cli.add_command(serve_command)
