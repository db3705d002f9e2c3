// Entry of the training bundle: the nav page. The default export becomes globalThis["Spot training"].
import { SpotTraining } from "./SpotTraining";

export default SpotTraining;
