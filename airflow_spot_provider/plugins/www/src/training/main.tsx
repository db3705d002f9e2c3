// Entry of the "SpotTraining" bundle: the nav page. The default export becomes globalThis.SpotTraining.
import { SpotTraining } from "./SpotTraining";

export default SpotTraining;
