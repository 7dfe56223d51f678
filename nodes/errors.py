"""Errors a user can act on: each names the node, the input and the fix.

ComfyUI shows the message in its error dialog and in the /prompt and websocket errors, next
to the node's id and type; the server keeps serving.
"""


class FlexIPInputError(ValueError):
    def __init__(self, node, input_name, problem, fix):
        super().__init__(f"{node}, input '{input_name}': {problem} Fix: {fix}")
