package image

import (
	"reflect"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestFillInspect: inspect shows the config's labels, ports, volumes, stop
// signal, platform fields, history and the layer digests (issue 13 §4).
func TestFillInspect(t *testing.T) {
	l0 := v1.Hash{Algorithm: "sha256", Hex: "aa" + hex62}
	l1 := v1.Hash{Algorithm: "sha256", Hex: "bb" + hex62}
	diff := v1.Hash{Algorithm: "sha256", Hex: "cc" + hex62}
	tests := []struct {
		name   string
		cfg    v1.ConfigFile
		layers []v1.Descriptor
		want   Image
	}{
		{
			name: "everything",
			cfg: v1.ConfigFile{
				OS: "linux", Architecture: "arm", Variant: "v7",
				Config: v1.Config{
					Labels:       map[string]string{"org.opencontainers.image.title": "x"},
					ExposedPorts: map[string]struct{}{"8080/tcp": {}, "53/udp": {}},
					Volumes:      map[string]struct{}{"/data": {}, "/cache": {}},
					StopSignal:   "SIGQUIT",
				},
				History: []v1.History{{CreatedBy: "ADD rootfs /"}, {CreatedBy: "ENV A=1", EmptyLayer: true}, {CreatedBy: "RUN x"}},
			},
			layers: []v1.Descriptor{{Digest: l0}, {Digest: l1}},
			want: Image{
				Labels:       map[string]string{"org.opencontainers.image.title": "x"},
				ExposedPorts: []string{"53/udp", "8080/tcp"},
				Volumes:      []string{"/cache", "/data"},
				StopSignal:   "SIGQUIT", OS: "linux", Architecture: "arm", Variant: "v7",
				History: []History{{CreatedBy: "ADD rootfs /"}, {CreatedBy: "ENV A=1", EmptyLayer: true}, {CreatedBy: "RUN x"}},
				Layers:  []string{l0.String(), l1.String()},
			},
		},
		{
			name:   "docker archive: layers by diff ID",
			cfg:    v1.ConfigFile{OS: "linux", Architecture: "amd64", RootFS: v1.RootFS{DiffIDs: []v1.Hash{diff}}},
			layers: []v1.Descriptor{{Size: -1}},
			want:   Image{OS: "linux", Architecture: "amd64", ExposedPorts: []string{}, Volumes: []string{}, Layers: []string{diff.String()}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got Image
			fillInspect(&got, &tt.cfg, tt.layers)
			if len(got.ExposedPorts) == 0 && len(tt.want.ExposedPorts) == 0 {
				got.ExposedPorts, tt.want.ExposedPorts = nil, nil
			}
			if len(got.Volumes) == 0 && len(tt.want.Volumes) == 0 {
				got.Volumes, tt.want.Volumes = nil, nil
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("fillInspect() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

const hex62 = "00000000000000000000000000000000000000000000000000000000000000"
