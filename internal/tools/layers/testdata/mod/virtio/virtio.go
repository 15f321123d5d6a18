package virtio

import _ "os/exec"
