"""Every pipeline stage, in dependency order (a stage comes after the stages it reads): the one list
`microscope build`, `microscope demo` and `--only/--skip` use. Each module holds one
`worker.pipeline.contract.Stage`."""
from worker.stages.attribution import Attribution
from worker.stages.directions import Directions
from worker.stages.emotions import Emotions
from worker.stages.examples import Examples
from worker.stages.featurevis import FeatureVis
from worker.stages.maps import Maps
from worker.stages.modality import Modality
from worker.stages.regions import Regions
from worker.stages.selflabels import SelfLabels
from worker.stages.stroop import Stroop
from worker.stages.suggest import Suggest
from worker.stages.typographic import Typographic
from worker.stages.words import Words

STAGES = (Examples(), FeatureVis(), Words(), Maps(), Regions(), Attribution(), Emotions(), Typographic(),
          Stroop(), Suggest(), Modality(), SelfLabels(), Directions())
STAGE_NAMES = tuple(s.name for s in STAGES)
