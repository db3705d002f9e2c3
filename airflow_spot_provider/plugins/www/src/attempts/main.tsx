// Entry of the attempts bundle: the task instance tab. The default export becomes globalThis["Spot attempts"].
import { SpotAttempts } from "./SpotAttempts";

export default SpotAttempts;
