"""FlexIP: the trained parts in one module, as stored in a weight file."""
from torch import nn

from .adapters import PersonalizationAdapter, PreservationAdapter
from .gate import TrainingGate
from .projections import LayerProjections


class FlexIP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.preservation = PreservationAdapter(config)
        self.personalization = PersonalizationAdapter(config)
        self.projections = LayerProjections(config)
        self.gate = TrainingGate()
