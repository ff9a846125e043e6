from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway_site.configfile import ConfigError, apply, export, load


class Command(BaseCommand):
    help = (
        "Configuration as code. `export` writes providers, routes, deployments, prices, tenants, projects and budgets "
        "as YAML; `apply FILE` shows what the file would change, and with --yes changes it, in one transaction."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{export,apply}")
        out = actions.add_parser("export", help="Write the configuration as YAML (to standard output by default)")
        out.add_argument("-o", "--output", metavar="FILE", help="Write to this file instead")
        into = actions.add_parser("apply", help="Show, and with --yes apply, what a configuration file changes")
        into.add_argument("path", metavar="FILE",
                          help="A file written by `tollgate export` (or by hand); - reads standard input")
        into.add_argument("--yes", action="store_true", help="Apply the changes (default: only show them)")
        into.add_argument("--prune", action="store_true",
                          help="Also delete what the file leaves out (never tenants, nor budgets on API keys)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["action"] == "export":
                self.export(options["output"])
            else:
                self.apply(options["path"], commit=options["yes"], prune=options["prune"])
        except ConfigError as e:
            raise CommandError(str(e)) from None

    def export(self, output: str | None) -> None:
        exported = export.export()
        text = export.dump(exported.document)
        for note in exported.notes:
            self.stderr.write(f"note: {note}")
        if output:
            try:
                Path(output).write_text(text, encoding="utf-8")
            except OSError as e:
                raise CommandError(f"cannot write {output}: {e.strerror}") from None
        else:
            self.stdout.write(text, ending="")

    def apply(self, path: str, *, commit: bool, prune: bool) -> None:
        if path == "-":
            text = sys.stdin.read()
        else:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise CommandError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
        document = load.parse(text, source=path)
        planned = apply.plan(document, prune=prune)
        apply.execute(planned, commit=commit)
        self.stdout.write(apply.render(planned, applied=commit), ending="")
