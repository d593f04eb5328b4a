# The flotilla image of ../../Dockerfile, assembled from a flotilla binary
# built on the host instead of in a golang image: same paths, user, data
# directory and entrypoint. The build context is made by compose/images
# (main.go): rootfs/ holds /usr/local/bin/flotilla, /tmp and the CA
# certificates, data/ the empty data directory.
FROM scratch
COPY rootfs/ /
COPY --chown=65532:65532 data/ /var/lib/flotilla/
USER 65532:65532
WORKDIR /var/lib/flotilla
# USER and HOME: the base image has no /etc/passwd, and the natscli
# context lookup asks who the user is (distroless's nonroot, as in
# ../../Dockerfile).
ENV PATH=/usr/local/bin FLOTILLA_DATA=/var/lib/flotilla USER=nonroot HOME=/home/nonroot
ENTRYPOINT ["flotilla"]
CMD ["--help"]
