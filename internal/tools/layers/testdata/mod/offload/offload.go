package offload

import _ "example.com/m/virtio"
