"""``tresnet-ft push``: a checkpoint to the Hugging Face hub, in timm's hub layout."""
from __future__ import annotations

import argparse

PUSH_DESCRIPTION = """\
Write CKPT as a folder in timm's Hugging Face hub layout (config.json, model.safetensors,
tresnet_ft.json with the classes and tuned thresholds, a README.md model card with the run's
settings, metrics and plots), then upload it to the model repo ORG/NAME (created if needed).

The token comes from where huggingface_hub keeps it: the HF_TOKEN variable or `hf auth login`.
Without a token or network the folder is still written, and the error gives the command that
uploads it later. Loading it back:
  timm.create_model("hf-hub:ORG/NAME", pretrained=True)   (linear head only)
  tresnet_ft.load_classifier("hf-hub:ORG/NAME")           (any head, with the thresholds)
  tresnet-ft predict hf-hub:ORG/NAME photos/ -o predictions.csv
"""


def add_push_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``push`` on ``sub`` (the ``tresnet-ft`` subcommands)."""
    push = sub.add_parser("push", help="upload a checkpoint to the Hugging Face hub (timm's layout, model card)",
                          description=PUSH_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    push.add_argument("checkpoint", help="a checkpoint written by tresnet-ft fit, or a folder exported before")
    push.add_argument("--repo", required=True, metavar="ORG/NAME", help="the model repo on the hub")
    push.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its "
                                                              "visibility)")
    push.add_argument("-o", "--output", default=None, metavar="FOLDER",
                      help="where to write the folder (default: beside the checkpoint, <checkpoint name>-hf)")
    push.set_defaults(run=_cmd_push)


def _cmd_push(args: argparse.Namespace) -> int:
    from ..inference.hub_push import push_to_hub

    push_to_hub(args.checkpoint, args.repo, private=args.private, folder=args.output)  # logs what it did
    return 0
