"""`microscope worker …`: compute stages. Each command imports torch only when it runs."""
import typer

worker_cli = typer.Typer(help="Precompute neuron data into the store (torch + open_clip).", no_args_is_help=True)
