"""The `hessfree` command line (placeholder until the train command lands)."""

import click


@click.group()
def main() -> None:
    """hessfree: Hessian-free training of deep neural networks."""
