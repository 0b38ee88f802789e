"""One module per `intattn` subcommand (see intattn_tl.cli)."""
